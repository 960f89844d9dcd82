/**
 * The deliberately plain baseline server every server figure is divided by: one process, the same
 * line grammar (`#en#<msg>#`, `#de#<token>#`), the plain node:crypto Fernet, one write per reply.
 * `--no-crypto` answers without any crypto (the cost of the sockets alone); `--http` serves
 * POST /encrypt and /decrypt with node:http instead; `--fastify` serves them with a bare Fastify
 * route over crypt's own Fernet (node:crypto), so the ratio to it is the cost of crypt's HTTP
 * stack alone (hooks, dispatcher, checks). Prints its port on stdout.
 */
import net from 'node:net';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import Fastify from 'fastify';
import { PlainFernet } from './plain-fernet.js';
import { FernetKey, decrypt as fernetDecrypt } from '../src/crypto/fernet.js';

const args = process.argv.slice(2);

if (args.includes('--fastify')) {
  const key = FernetKey.generate();
  const app = Fastify();
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('text/plain', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.post('/encrypt', async (req, reply) => reply.type('text/plain').send(key.encrypt(req.body as Buffer) + '\n'));
  app.post('/decrypt', async (req, reply) => {
    try {
      return reply.type('text/plain').send(fernetDecrypt([key], (req.body as Buffer).toString('latin1').trim()).plaintext);
    } catch {
      return reply.code(400).send('invalid token');
    }
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  console.log((app.server.address() as AddressInfo).port);
} else {
const fernet = new PlainFernet(randomBytes(32).toString('base64url'));
const crypto = !args.includes('--no-crypto');
const encrypt = (m: Buffer): string => (crypto ? fernet.encrypt(m) : m.toString('latin1'));
const decrypt = (t: string): Buffer => (crypto ? fernet.decrypt(t) : Buffer.from(t, 'latin1'));

const server = args.includes('--http')
  ? http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        try {
          const body = Buffer.concat(chunks);
          res.end(req.url === '/encrypt' ? encrypt(body) : decrypt(body.toString('latin1')));
        } catch {
          res.statusCode = 400;
          res.end('invalid token');
        }
      });
    })
  : net.createServer((socket) => {
      let buf = '';
      socket.setEncoding('latin1');
      socket.on('data', (chunk: string) => {
        buf += chunk;
        let lf: number;
        while ((lf = buf.indexOf('\n')) !== -1) {
          const line = buf.slice(0, lf);
          buf = buf.slice(lf + 1);
          const command = line.slice(1, 3);
          const payload = line.slice(4, line.lastIndexOf('#'));
          let reply: string;
          try {
            reply = command === 'en' ? encrypt(Buffer.from(payload, 'latin1')) : command === 'de' ? decrypt(payload).toString('latin1') : '#er#unknown_command#unknown command#';
          } catch {
            reply = '#er#invalid_token#invalid token#';
          }
          socket.write(reply + '\n', 'latin1');
        }
      });
      socket.on('error', () => undefined);
    });
server.listen(0, '127.0.0.1', () => console.log((server.address() as AddressInfo).port));
}
