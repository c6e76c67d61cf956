"""Ondernemersvoucher: QR vouchers for small entrepreneurs, with a ledger that cannot overspend."""

__version__ = "0.1.0"
