from __future__ import annotations

import pytest

from service.codes import ALPHABET, CODE_BODY_LENGTH, CodeKeys, InvalidCode, format_code, normalise_code
from service.settings import Settings

KEYS = CodeKeys.from_settings(Settings(environment="test", secret_key="k" * 32))


def sample_codes(n: int) -> list[str]:
    return [KEYS.code_for(KEYS.new_salt()) for _ in range(n)]


def test_code_has_at_least_100_random_bits_and_a_check_symbol() -> None:
    code = sample_codes(1)[0]
    assert len(code) == CODE_BODY_LENGTH + 1
    assert CODE_BODY_LENGTH * 5 >= 100
    assert set(code) <= set(ALPHABET)


def test_every_single_character_substitution_is_caught() -> None:
    for code in sample_codes(25):
        for position, original in enumerate(code):
            for other in ALPHABET:
                if other == original:
                    continue
                typo = code[:position] + other + code[position + 1 :]
                with pytest.raises(InvalidCode):
                    normalise_code(typo)


def test_input_is_case_dash_and_space_insensitive() -> None:
    code = sample_codes(1)[0]
    typed = " " + format_code(code).lower().replace("-", " - ") + " "
    assert normalise_code(typed) == code
    assert normalise_code(format_code(code)) == code


def test_crockford_lookalikes_are_read_as_digits() -> None:
    code = next(c for c in sample_codes(200) if "1" in c[:-1] or "0" in c[:-1])
    lookalike = code.replace("1", "l").replace("0", "O")
    assert normalise_code(lookalike) == code


@pytest.mark.parametrize("text", ["", "ABC", "U" * 24, "!" * 24, "A" * 25])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(InvalidCode):
        normalise_code(text)


def test_code_depends_on_the_secret() -> None:
    salt = KEYS.new_salt()
    other = CodeKeys.from_settings(Settings(environment="test", secret_key="z" * 32))
    assert KEYS.code_for(salt) != other.code_for(salt)
    assert KEYS.hash_of(KEYS.code_for(salt)) != KEYS.code_for(salt).encode()
