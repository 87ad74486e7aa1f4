import type { RawData, WebSocket } from 'ws';

/**
 * `kubectl exec` over WebSocket (the Kubernetes "channel" protocol): every
 * binary message starts with a channel byte — 0 stdin, 1 stdout, 2 stderr,
 * 3 error (a final metav1.Status), 4 terminal resize (ignored here). v5 adds 255 = "close":
 * the second byte names the channel the client will not write to any more.
 */
export const EXEC_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io'];

const STDIN = 0;
const STDOUT = 1;
const ERROR = 3;
const CLOSE = 255;

const SUCCESS = JSON.stringify({ metadata: {}, status: 'Success' });

/**
 * The stand-in "container": `echo ARGS...` prints its arguments; any other
 * command behaves like `cat`, echoing stdin back on stdout until stdin is
 * closed. Without stdin the command ends right after its output. The session
 * ends with a Success status on the error channel, then a normal close.
 */
export function runExecSession(ws: WebSocket, protocol: string, query: URLSearchParams): void {
  const command = query.getAll('command');
  const stdin = query.get('stdin') === 'true' || query.get('stdin') === '1';
  const v5 = protocol === 'v5.channel.k8s.io';
  let finished = false;

  const send = (channel: number, data: Buffer): void => {
    if (ws.readyState === ws.OPEN) ws.send(Buffer.concat([Buffer.of(channel), data]), { binary: true });
  };
  const finish = (): void => {
    if (finished) return;
    finished = true;
    send(ERROR, Buffer.from(SUCCESS));
    ws.close(1000);
  };

  if (command[0] === 'echo') send(STDOUT, Buffer.from(command.slice(1).join(' ') + '\n'));
  if (!stdin) {
    finish();
    return;
  }

  ws.on('message', (raw: RawData) => {
    const data = toBuffer(raw);
    if (data.length === 0) return;
    const channel = data[0];
    if (channel === STDIN) {
      if (command[0] !== 'echo') send(STDOUT, data.subarray(1));
    } else if (channel === CLOSE && v5 && data[1] === STDIN) {
      finish();
    }
    // RESIZE and anything else: terminal size does not matter to an echo.
  });
}

export function toBuffer(raw: RawData): Buffer {
  if (Buffer.isBuffer(raw)) return raw;
  if (Array.isArray(raw)) return Buffer.concat(raw);
  return Buffer.from(raw);
}
