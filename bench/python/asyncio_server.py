"""An asyncio TCP server with Python's cryptography: the same line grammar as crypt.

Two variants, both reported: by default, tuned (a drain only once 64 KiB are buffered, which
lets pipelined replies go out together); with --drain-each, idiomatic (`await writer.drain()`
after every write, as the asyncio documentation shows). Prints its port on stdout.
"""
import asyncio
import sys

DRAIN_EACH = "--drain-each" in sys.argv

from cryptography.fernet import Fernet, InvalidToken

fernet = Fernet(Fernet.generate_key())


async def handle(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            command, payload = line[1:3], line[4:line.rfind(b"#")]
            try:
                if command == b"en":
                    out = fernet.encrypt(payload)
                elif command == b"de":
                    out = fernet.decrypt(payload)
                else:
                    out = b"#er#unknown_command#unknown command#"
            except InvalidToken:
                out = b"#er#invalid_token#invalid token#"
            writer.write(out + b"\n")
            if DRAIN_EACH or writer.transport.get_write_buffer_size() > 65536:
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
