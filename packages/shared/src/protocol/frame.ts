/**
 * Frame layout of the kubetunnel tunnel protocol, version 1.
 *
 * Every frame is a 10-byte header followed by `length` payload bytes:
 *
 *   0      1      2             6             10
 *   +------+------+-------------+-------------+-----------------+
 *   | type | flags| stream id   | length      | payload ...     |
 *   | u8   | u8   | u32 BE      | u32 BE      | length bytes    |
 *   +------+------+-------------+-------------+-----------------+
 *
 * One WebSocket binary message carries one or more whole frames. Stream id 0
 * is the session itself (PING, PONG, GOAWAY); every other kind names a stream.
 * Flags are reserved and must be 0 in version 1.
 *
 * A stream carries no DATA before OPEN_OK. So a stream that ended before
 * OPEN_OK carried nothing, and the opener may open it again elsewhere when
 * the reason says the tunnel, not the target, refused it: OPEN_ERR with
 * GOING_AWAY (the agent sent or is about to send GOAWAY and dials nothing
 * more) or TOO_MANY_STREAMS, or the session ending while the OPEN waited
 * (see retryElsewhere in errors.ts). A dial failure (DIAL_*), a refused
 * target and a timeout are final.
 */

export const PROTOCOL_VERSION = 1;
/** The WebSocket subprotocol that names this version. */
export const SUBPROTOCOL = `kubetunnel.v${PROTOCOL_VERSION}`;
export const HEADER_SIZE = 10;
export const MAX_STREAM_ID = 0xffff_ffff;
export const MAX_WINDOW = 0x7fff_ffff;
/** Longest message text carried by OPEN_ERR, RESET and GOAWAY. */
export const MAX_MESSAGE_BYTES = 1024;
/** Longest OPEN target (`apiserver` or host:port). */
export const MAX_TARGET_LENGTH = 261;

export const FrameType = {
  OPEN: 1,
  OPEN_OK: 2,
  OPEN_ERR: 3,
  DATA: 4,
  WINDOW: 5,
  FIN: 6,
  RESET: 7,
  PING: 8,
  PONG: 9,
  GOAWAY: 10,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** Who the caller is, for L7 streams the agent completes with impersonation. */
export interface Identity {
  user: string;
  groups: string[];
  uid?: string;
  extra?: Record<string, string[]>;
}

/** What an OPEN asks the agent to reach. */
/** The OPEN target that names the agent's own apiserver, whatever its address. */
export const APISERVER_TARGET = 'apiserver';

export interface OpenRequest {
  /** `tcp`: bytes to the target; `http`: HTTP/1.1 requests the agent completes. */
  kind: 'tcp' | 'http';
  /** APISERVER_TARGET, or a `host:port` from the agent's allow list. */
  target: string;
  identity?: Identity;
}

export type Frame =
  | { type: typeof FrameType.OPEN; streamId: number; window: number; request: OpenRequest }
  | { type: typeof FrameType.OPEN_OK; streamId: number; window: number }
  | { type: typeof FrameType.OPEN_ERR; streamId: number; code: number; message: string }
  | { type: typeof FrameType.DATA; streamId: number; data: Buffer }
  | { type: typeof FrameType.WINDOW; streamId: number; increment: number }
  | { type: typeof FrameType.FIN; streamId: number }
  | { type: typeof FrameType.RESET; streamId: number; code: number; message: string }
  | { type: typeof FrameType.PING; streamId: 0; payload: bigint }
  | { type: typeof FrameType.PONG; streamId: 0; payload: bigint }
  | { type: typeof FrameType.GOAWAY; streamId: 0; code: number; message: string };
