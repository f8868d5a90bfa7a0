/** vhost-user message framing and constants (QEMU docs/interop/vhost-user.rst). */

export const VHOST_USER_VERSION = 0x1;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
export const HEADER_SIZE = 12;
/** Largest payload accepted (the memory table of 8 regions is 264 bytes). */
export const MAX_PAYLOAD = 4096;

export enum Req {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
  SEND_RARP = 19,
  NET_SET_MTU = 20,
  SET_BACKEND_REQ_FD = 21,
  IOTLB_MSG = 22,
  SET_VRING_ENDIAN = 23,
  GET_CONFIG = 24,
  SET_CONFIG = 25,
  GET_MAX_MEM_SLOTS = 36,
  ADD_MEM_REG = 37,
  REM_MEM_REG = 38,
  SET_STATUS = 39,
  GET_STATUS = 40,
}

export const F = {
  VIRTIO_RING_F_INDIRECT_DESC: 1n << 28n,
  VIRTIO_RING_F_EVENT_IDX: 1n << 29n,
  VHOST_USER_F_PROTOCOL_FEATURES: 1n << 30n,
  VIRTIO_F_VERSION_1: 1n << 32n,
} as const;

export const PF = {
  MQ: 1n << 0n,
  REPLY_ACK: 1n << 3n,
} as const;

/** SET_VRING_KICK/CALL/ERR payload: index in bits 0-7, bit 8 = no descriptor (polling). */
export const VRING_IDX_MASK = 0xffn;
export const VRING_NOFD_MASK = 1n << 8n;

export interface Header {
  request: number;
  flags: number;
  size: number;
}

export function decodeHeader(b: Buffer): Header {
  return { request: b.readUInt32LE(0), flags: b.readUInt32LE(4), size: b.readUInt32LE(8) };
}

export function encodeReply(request: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(HEADER_SIZE + payload.length);
  b.writeUInt32LE(request, 0);
  b.writeUInt32LE(VHOST_USER_VERSION | FLAG_REPLY, 4);
  b.writeUInt32LE(payload.length, 8);
  payload.copy(b, HEADER_SIZE);
  return b;
}

export function u64Payload(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

/** Builds a request as a VMM would send it (tests, the guest-driver harness). */
export function encodeRequest(request: number, payload: Buffer, flags = VHOST_USER_VERSION): Buffer {
  const b = Buffer.alloc(HEADER_SIZE + payload.length);
  b.writeUInt32LE(request, 0);
  b.writeUInt32LE(flags, 4);
  b.writeUInt32LE(payload.length, 8);
  payload.copy(b, HEADER_SIZE);
  return b;
}
