"""Opaque crypto errors: one per failure class, never a hint of which check failed."""


class CryptoError(Exception):
    pass


class BadSignature(CryptoError):
    def __init__(self, message: str = "bad signature"):
        super().__init__(message)


class DecryptionFailed(CryptoError):
    def __init__(self, message: str = "decryption failed"):
        super().__init__(message)


class WrongPassphrase(CryptoError):
    def __init__(self, message: str = "wrong passphrase or corrupted key file"):
        super().__init__(message)
