//! The first frame of a WebSocket-only Engine.IO session (docs/request-handling.md "Engine.IO
//! sessions"): the upstream's open packet, read whole by the gateway so that its `sid`
//! can be replaced by the sealed one, and written again as a frame of its new length
//! (RFC 6455 5.2). Frames from a server are never masked.

/// Largest first frame read whole; a larger one is no open packet.
pub const MAX_OPEN_FRAME: usize = 4096;

/// What starts the frames after a `101`.
#[derive(Debug, PartialEq, Eq)]
pub enum First {
    /// Not all of the first frame yet.
    More,
    /// A frame the gateway can not read: masked, or with reserved bits (a compressed
    /// frame, although no extension was offered).
    Unreadable,
    /// A first frame that is no open packet (not one whole text frame, or too long).
    Other,
    /// A whole text frame: its header length and payload length.
    Text {
        /// Bytes of the frame header.
        header: usize,
        /// Bytes of payload after it.
        payload: usize,
    },
}

/// Reads the first frame at the start of `bytes`.
pub fn first_text(bytes: &[u8]) -> First {
    let [b0, b1, rest @ ..] = bytes else {
        return First::More;
    };
    if b0 & 0x70 != 0 || b1 & 0x80 != 0 {
        return First::Unreadable;
    }
    let (header, payload) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (4, usize::from(u16::from_be_bytes([*a, *b]))),
            _ => return First::More,
        },
        127 => match rest.get(..8) {
            Some(len) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(len);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
                )
            }
            None => return First::More,
        },
        n => (2, usize::from(n)),
    };
    // FIN and the text opcode: an open packet is one whole text message.
    if *b0 != 0x81 || payload > MAX_OPEN_FRAME {
        return First::Other;
    }
    if bytes.len() < header + payload {
        return First::More;
    }
    First::Text { header, payload }
}

/// Appends the header of an unmasked, final text frame of `len` payload bytes.
pub fn push_text_header(out: &mut Vec<u8>, len: usize) {
    out.push(0x81);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_text_frame_is_read_whole_and_written_again() {
        for len in [0usize, 5, 125, 126, 300, 4096] {
            let mut frame = Vec::new();
            push_text_header(&mut frame, len);
            let header = frame.len();
            frame.extend(std::iter::repeat_n(b'x', len));
            frame.extend_from_slice(b"\x81\x01y");
            assert_eq!(
                first_text(&frame),
                First::Text {
                    header,
                    payload: len
                },
                "{len}"
            );
            for cut in 0..header + len {
                assert_eq!(first_text(&frame[..cut]), First::More, "{len} cut {cut}");
            }
        }
        assert_eq!(first_text(b"\x82\x01x"), First::Other);
        assert_eq!(first_text(b"\x01\x01x"), First::Other);
        assert_eq!(first_text(b"\xc1\x01x"), First::Unreadable);
        assert_eq!(first_text(b"\x81\x81abcdx"), First::Unreadable);
        let mut big = Vec::new();
        push_text_header(&mut big, MAX_OPEN_FRAME + 1);
        assert_eq!(first_text(&big), First::Other);
    }
}
