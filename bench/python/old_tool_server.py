"""The design of the Python tool crypt replaces: socketserver, one client at a time, one request
per connection (recv up to 1 KiB, answer, close), a key made at start. Prints its port on stdout.
Kept only to measure that design against crypt; its flaws are the point of the comparison.
"""
import socketserver

from cryptography.fernet import Fernet

fernet = Fernet(Fernet.generate_key())


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        data = self.request.recv(1024).decode()
        parts = data.split("#")
        command, payload = parts[1], parts[2]
        if command == "en":
            out = fernet.encrypt(payload.encode()).decode()
        elif command == "de":
            out = fernet.decrypt(payload.encode()).decode()
        else:
            out = "unknown"
        self.request.sendall((out + "\n").encode())


class Server(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 1024


with Server(("127.0.0.1", 0), Handler) as server:
    print(server.server_address[1], flush=True)
    server.serve_forever()
