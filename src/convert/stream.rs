//! The content of a large attachment, decoded block by block from the raw message, for the
//! upload path: the spooled file is read where the parse found the part, line ends are
//! normalised as the parse saw them, and each block goes through the same mail-parser decoder
//! as the parse did, so no attachment is ever held in memory whole.

use std::io::{self, Read, Seek, SeekFrom};

use mail_parser::{Encoding, parsers::MessageStream};

/// Encoded bytes read from the message per step.
const BLOCK: usize = 256 * 1024;

/// Where a part's transfer-encoded body lies in the raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSource {
    /// Start of the encoded body, counted in the message as parsed (line ends CRLF).
    pub start: u64,
    /// End (exclusive), counted the same way.
    pub end: u64,
    /// The stored message has other line ends than CRLF: the range counts the normalised bytes,
    /// so the message is read, and normalised, from its start.
    pub normalised: bool,
    pub encoding: Encoding,
}

/// Reads the decoded content of one part, in chunks.
pub struct Content<R> {
    input: R,
    encoding: Encoding,
    /// Normalised message bytes still to skip before the range (only when `normalised`).
    skip: u64,
    /// Normalised bytes of the range still to read.
    remaining: u64,
    normalise: bool,
    /// A CR at the end of the last read, undecided until the next byte shows whether it ends
    /// a line (CRLF) or stands alone.
    held_cr: bool,
    /// Encoded bytes read but not yet decoded (an unfinished base64 quantum or QP line).
    encoded: Vec<u8>,
    /// Decoded bytes not yet handed out.
    decoded: Vec<u8>,
    input_done: bool,
}

impl<R: Read + Seek> Content<R> {
    /// Positions `message` (the raw message, from any offset) at the part's content.
    ///
    /// # Errors
    /// The seek failed.
    pub fn open(mut message: R, source: &PartSource) -> io::Result<Self> {
        let (seek, skip) = if source.normalised {
            (0, source.start)
        } else {
            (source.start, 0)
        };
        message.seek(SeekFrom::Start(seek))?;
        Ok(Self {
            input: message,
            encoding: source.encoding,
            skip,
            remaining: source.end.saturating_sub(source.start),
            normalise: source.normalised,
            held_cr: false,
            encoded: Vec::new(),
            decoded: Vec::new(),
            input_done: false,
        })
    }
}

impl<R: Read> Content<R> {
    /// The next `max` decoded bytes, fewer only at the end; empty once all are read.
    ///
    /// # Errors
    /// Reading failed, or the content does not decode.
    pub fn next_chunk(&mut self, max: usize) -> io::Result<Vec<u8>> {
        while self.decoded.len() < max && !(self.input_done && self.encoded.is_empty()) {
            self.decode_more()?;
        }
        let rest = self.decoded.split_off(self.decoded.len().min(max));
        Ok(std::mem::replace(&mut self.decoded, rest))
    }

    /// Discards the next `count` decoded bytes (to resume an upload further on).
    ///
    /// # Errors
    /// As [`Self::next_chunk`]; and when the content ends first.
    pub fn skip(&mut self, mut count: u64) -> io::Result<()> {
        while count > 0 {
            let step = count.min(BLOCK as u64) as usize;
            let skipped = self.next_chunk(step)?.len();
            if skipped == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the attachment ends before the offset to resume from",
                ));
            }
            count -= skipped as u64;
        }
        Ok(())
    }

    /// Reads one block and decodes as much of the encoded bytes as can be cut off cleanly.
    fn decode_more(&mut self) -> io::Result<()> {
        if !self.input_done {
            self.read_block()?;
        }
        let cut = if self.input_done {
            self.encoded.len()
        } else {
            match self.encoding {
                Encoding::None => self.encoded.len(),
                Encoding::Base64 => base64_cut(&self.encoded),
                Encoding::QuotedPrintable => line_cut(&self.encoded),
            }
        };
        if cut == 0 {
            return Ok(());
        }
        let rest = self.encoded.split_off(cut);
        let block = std::mem::replace(&mut self.encoded, rest);
        // An empty boundary makes the decoders read to the end of the block.
        let (end, decoded) = match self.encoding {
            Encoding::None => {
                self.decoded.extend_from_slice(&block);
                return Ok(());
            }
            Encoding::Base64 => MessageStream::new(&block).decode_base64_mime(b""),
            Encoding::QuotedPrintable => {
                MessageStream::new(&block).decode_quoted_printable_mime(b"")
            }
        };
        if end == usize::MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the attachment's transfer encoding does not decode",
            ));
        }
        self.decoded.extend_from_slice(&decoded);
        Ok(())
    }

    /// Appends up to [`BLOCK`] bytes of the range (normalised) to `encoded`.
    fn read_block(&mut self) -> io::Result<()> {
        // Unnormalised, the range is exact: nothing past it is read.
        let want = if self.normalise {
            BLOCK
        } else {
            BLOCK.min(usize::try_from(self.remaining).unwrap_or(BLOCK))
        };
        let mut raw = vec![0; want];
        let read = loop {
            match self.input.read(&mut raw) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        raw.truncate(read);
        let at_end = read == 0;
        let bytes = if self.normalise {
            self.normalise_block(&raw, at_end)
        } else {
            raw
        };
        let mut bytes = &bytes[..];
        let skipped = self.skip.min(bytes.len() as u64) as usize;
        self.skip -= skipped as u64;
        bytes = &bytes[skipped..];
        let taken = self.remaining.min(bytes.len() as u64) as usize;
        self.remaining -= taken as u64;
        self.encoded.extend_from_slice(&bytes[..taken]);
        if self.remaining == 0 || at_end {
            self.input_done = true;
        }
        Ok(())
    }

    /// `raw` with every line end CRLF, as the parse saw the message; a CR at the end of `raw`
    /// waits for the next block, which tells whether an LF completes it.
    fn normalise_block(&mut self, raw: &[u8], at_end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
        let mut cr = std::mem::take(&mut self.held_cr);
        for &b in raw {
            if cr {
                // A CR ends a line whatever follows; an LF right after it belongs to that end.
                out.extend_from_slice(b"\r\n");
                cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => cr = true,
                b'\n' => out.extend_from_slice(b"\r\n"),
                _ => out.push(b),
            }
        }
        if cr {
            if at_end {
                out.extend_from_slice(b"\r\n");
            } else {
                self.held_cr = true;
            }
        }
        out
    }
}

/// Where base64 may be cut: after the last byte that completes a quantum (or a padding `=`,
/// which ends one), not right after a `-` (two in a row end the content for the decoder).
fn base64_cut(encoded: &[u8]) -> usize {
    let mut sextets = 0u8;
    let mut cut = 0;
    for (i, &b) in encoded.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' => sextets = (sextets + 1) % 4,
            b'=' => sextets = 0,
            _ => {}
        }
        if sextets == 0 && b != b'-' {
            cut = i + 1;
        }
    }
    cut
}

/// Where quoted-printable may be cut: after the last line end, where the decoder's state
/// starts afresh.
fn line_cut(encoded: &[u8]) -> usize {
    encoded
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use base64::{Engine, engine::general_purpose::STANDARD};

    use super::*;

    /// Deterministic bytes that are not a repeating pattern of small period.
    fn data(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// `encoded` between a header and a closing boundary, as it sits in a message, with the
    /// source pointing at it.
    fn framed(encoded: &[u8], encoding: Encoding) -> (Vec<u8>, PartSource) {
        let head = b"Content-Transfer-Encoding: x\r\n\r\n";
        let mut message = head.to_vec();
        message.extend_from_slice(encoded);
        let end = message.len() as u64;
        message.extend_from_slice(b"\r\n--b--\r\n");
        let source = PartSource {
            start: head.len() as u64,
            end,
            normalised: false,
            encoding,
        };
        (message, source)
    }

    /// Everything `Content` yields in chunks of `chunk`, checking each is full but the last.
    fn streamed(message: &[u8], source: &PartSource, chunk: usize) -> Vec<u8> {
        let mut content = Content::open(Cursor::new(message), source).unwrap();
        let mut out = Vec::new();
        loop {
            let next = content.next_chunk(chunk).unwrap();
            assert!(next.len() <= chunk);
            if next.len() < chunk {
                out.extend_from_slice(&next);
                assert!(content.next_chunk(chunk).unwrap().is_empty());
                return out;
            }
            out.extend_from_slice(&next);
        }
    }

    /// What mail-parser makes of the whole range at once (as the parse and `content` do).
    fn whole(encoded: &[u8], encoding: Encoding) -> Vec<u8> {
        let (end, decoded) = match encoding {
            Encoding::Base64 => MessageStream::new(encoded).decode_base64_mime(b""),
            Encoding::QuotedPrintable => {
                MessageStream::new(encoded).decode_quoted_printable_mime(b"")
            }
            Encoding::None => return encoded.to_vec(),
        };
        assert_ne!(end, usize::MAX, "the test data decodes");
        decoded.into_owned()
    }

    fn base64_lines(bytes: &[u8], width: usize, eol: &str) -> Vec<u8> {
        let encoded = STANDARD.encode(bytes);
        let mut out = String::new();
        for line in encoded.as_bytes().chunks(width) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push_str(eol);
        }
        out.into_bytes()
    }

    #[test]
    fn base64_in_chunks_equals_the_whole_whatever_the_line_width() {
        let bytes = data(700_001, 1);
        // 76 is the usual width; 75 and 77 put quanta across line ends; one line of 900 KiB
        // has no line end at all within a block.
        for width in [76, 75, 77, 1_000_000] {
            let encoded = base64_lines(&bytes, width, "\r\n");
            let (message, source) = framed(&encoded, Encoding::Base64);
            for chunk in [1, 4093, 65_536, 4 * 1024 * 1024] {
                if chunk == 1 && width != 75 {
                    continue;
                }
                let out = streamed(&message, &source, chunk);
                assert!(out == bytes, "width {width}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn padding_in_the_middle_and_stray_whitespace_decode_as_the_parser_does() {
        // Two encodings glued together (padding mid-stream), tabs and spaces between.
        let mut encoded = base64_lines(&data(300_001, 2), 60, "\r\n");
        encoded.extend_from_slice(b" \t\r\n");
        encoded.extend_from_slice(&base64_lines(&data(400_002, 3), 64, "\r\n"));
        let (message, source) = framed(&encoded, Encoding::Base64);
        let expected = whole(&encoded, Encoding::Base64);
        assert_eq!(expected.len(), 700_003);
        assert!(streamed(&message, &source, 1_000_003) == expected);
        assert!(streamed(&message, &source, 12_345) == expected);
    }

    #[test]
    fn quoted_printable_in_chunks_equals_the_whole() {
        let mut encoded = Vec::new();
        for i in 0..40_000 {
            // Soft breaks, escapes, trailing spaces (dropped before a hard break) and hard
            // breaks.
            encoded.extend_from_slice(
                format!("Zeile {i} mit Umlaut =C3=BC und ist lang genug f=C3=BCr eine=\r\n weiche Umbruchstelle   \r\n").as_bytes(),
            );
        }
        let (message, source) = framed(&encoded, Encoding::QuotedPrintable);
        let expected = whole(&encoded, Encoding::QuotedPrintable);
        assert!(expected.windows(2).any(|w| w == "ü".as_bytes()));
        for chunk in [7, 100_000, 4 * 1024 * 1024] {
            assert!(
                streamed(&message, &source, chunk) == expected,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn identity_is_the_range_itself() {
        let bytes = data(600_000, 4);
        let (message, source) = framed(&bytes, Encoding::None);
        assert!(streamed(&message, &source, 100_000) == bytes);
    }

    #[test]
    fn a_message_with_bare_line_ends_is_read_as_the_parse_saw_it() {
        // Stored with LF (and one lone CR) line ends; the parse saw CRLF, so the range counts
        // normalised bytes from the start of the message.
        let bytes = data(500_000, 5);
        let mut stored = b"Subject: x\nContent-Transfer-Encoding: base64\r\r\n".to_vec();
        let encoded = base64_lines(&bytes, 76, "\n");
        let start = stored.len() as u64 + 2; // the LF and lone CR each become CRLF
        stored.extend_from_slice(&encoded);
        let end = start + encoded.len() as u64 + (encoded.len() / 77) as u64;
        stored.extend_from_slice(b"--b--\n");
        let source = PartSource {
            start,
            end,
            normalised: true,
            encoding: Encoding::Base64,
        };
        assert!(streamed(&stored, &source, 65_536) == bytes);

        // Identity content keeps the CRLF the parse saw.
        let text = "line one\nline two\rline three\r\n".repeat(20_000);
        let mut stored = b"Subject: y\n\n".to_vec();
        stored.extend_from_slice(text.as_bytes());
        let normalised = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .replace('\n', "\r\n");
        let source = PartSource {
            start: "Subject: y\r\n\r\n".len() as u64,
            end: ("Subject: y\r\n\r\n".len() + normalised.len()) as u64,
            normalised: true,
            encoding: Encoding::None,
        };
        assert!(streamed(&stored, &source, 300_001) == normalised.as_bytes());
    }

    #[test]
    fn resuming_further_on_skips_and_a_bad_encoding_is_an_error() {
        let bytes = data(1_000_000, 6);
        let (message, source) = framed(&base64_lines(&bytes, 76, "\r\n"), Encoding::Base64);
        let mut content = Content::open(Cursor::new(&message), &source).unwrap();
        content.skip(600_001).unwrap();
        assert!(content.next_chunk(1_000_000).unwrap() == bytes[600_001..]);
        let mut content = Content::open(Cursor::new(&message), &source).unwrap();
        let err = content.skip(1_000_001).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (message, source) = framed(b"QUJD\r\n!!not base64!!\r\n", Encoding::Base64);
        let mut content = Content::open(Cursor::new(&message), &source).unwrap();
        let err = content.next_chunk(10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
