#!/usr/bin/env python3
"""Reference decryptor for crypt-stream/1 (docs/stream-format.md), with pyca/cryptography.

    crypt-client de "$(sed -n 3p file.crypt)" | python3 stream-decrypt.py file.crypt > file

Reads the 32-byte file key on stdin (raw, or base64url), writes the plaintext to stdout, and
exits 1 without writing anything more on any failure. It holds the whole plaintext before
writing it, so that nothing of a stream that fails later is written: a reference, not a tool.
"""
import base64, hashlib, hmac, re, sys
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

def hkdf(key, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)

def decrypt(data, file_key):
    if not data.startswith(b"crypt-stream/1\n"): raise ValueError("not a crypt stream")
    name_end = data.index(b"\n", 15); token_end = data.index(b"\n", name_end + 1)
    if not re.fullmatch(rb"[a-z0-9][a-z0-9._-]{0,63}", data[15:name_end]): raise ValueError("bad key name")
    nonce, mac = data[token_end + 1:token_end + 17], data[token_end + 17:token_end + 49]
    expected = hmac.new(hkdf(file_key, b"", b"crypt-stream header"), data[:token_end + 17], hashlib.sha256).digest()
    if len(mac) != 32 or not hmac.compare_digest(mac, expected): raise ValueError("header MAC")
    aead, payload, out, i = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload")), data[token_end + 49:], [], 0
    while True:
        chunk, payload = payload[:65536 + 16], payload[65536 + 16:]
        last = len(payload) == 0  # a chunk is the final one only when nothing follows it
        if len(chunk) < 16: raise ValueError("truncated")
        out.append(aead.decrypt(i.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), chunk, None))
        if last:
            if not out[-1] and i > 0: raise ValueError("empty final chunk after others")
            return b"".join(out)
        i += 1

if __name__ == "__main__":
    raw = sys.stdin.buffer.read()
    key = raw if len(raw) == 32 else base64.urlsafe_b64decode(raw.strip() + b"=" * (-len(raw.strip()) % 4))
    try:
        plaintext = decrypt(open(sys.argv[1], "rb").read(), key)
    except (ValueError, InvalidTag) as e:
        sys.exit(f"stream-decrypt: {sys.argv[1]}: invalid stream ({type(e).__name__}: {e})")
    sys.stdout.buffer.write(plaintext)
