import { PayloadTooLargeError } from './payload-too-large.error.js';

/**
 * A submit whose statement could not fit the server's max_allowed_packet. A
 * PayloadTooLargeError too, so callers that catch that one catch this.
 */
export class PacketTooLargeError extends PayloadTooLargeError {
  constructor(what: string, bytes: number, limit: number) {
    super(what, bytes, limit);
    this.message =
      `The ${what} needs about ${bytes} bytes on the wire (after escaping), over what fits the server's ` +
      `max_allowed_packet (${limit} bytes usable). Store large data elsewhere and pass a reference, or raise max_allowed_packet.`;
  }
}
