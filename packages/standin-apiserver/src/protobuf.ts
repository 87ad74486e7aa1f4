/**
 * kubectl sends create bodies as Kubernetes protobuf
 * (`application/vnd.kubernetes.protobuf`): the magic `k8s\0`, then a
 * runtime.Unknown message whose field 2 (`raw`) is the object; the object's
 * field 1 is its ObjectMeta, whose field 1 is `name`. That is all we read.
 */
const MAGIC = Buffer.from('k8s\0', 'latin1');

export function isProtobuf(contentType: string | undefined): boolean {
  return (contentType ?? '').split(';')[0]!.trim() === 'application/vnd.kubernetes.protobuf';
}

export function protobufObjectName(body: Buffer): string | undefined {
  if (!body.subarray(0, 4).equals(MAGIC)) return undefined;
  const raw = field(body.subarray(4), 2);
  const meta = raw && field(raw, 1);
  const name = meta && field(meta, 1);
  return name?.toString('utf8');
}

/** The first length-delimited field `wanted` of a message. */
function field(message: Buffer, wanted: number): Buffer | undefined {
  let at = 0;
  const varint = (): number => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = message[at++];
      if (byte === undefined || shift > 49) throw new Error('truncated protobuf varint');
      value += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return value;
    }
  };
  try {
    while (at < message.length) {
      const key = varint();
      const wire = key % 8;
      const number = Math.floor(key / 8);
      if (wire === 0) varint();
      else if (wire === 1) at += 8;
      else if (wire === 5) at += 4;
      else if (wire === 2) {
        const length = varint();
        const value = message.subarray(at, at + length);
        at += length;
        if (number === wanted) return value;
      } else return undefined;
    }
  } catch {
    return undefined;
  }
  return undefined;
}
