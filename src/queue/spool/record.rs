//! The spool's file format, one file per entry: the message as received, then the entry's
//! metadata as JSON, then a footer. The footer is the commit marker: an entry counts only when
//! its footer is whole and its checksum matches, so a file cut short or half-flushed by a crash
//! is recognised as never acknowledged.
//!
//! Footer (16 bytes): JSON length (u32, little-endian), CRC-32 of the message and the JSON
//! (u32, little-endian), the magic `GRSPOOL1`.

/// The footer's length.
pub const FOOTER_LEN: usize = 16;
const MAGIC: &[u8; 8] = b"GRSPOOL1";

/// Why a file is not a whole entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no commit footer (the file was never completed)")]
    NoFooter,
    #[error("its checksum does not match (the file is damaged or was never flushed)")]
    Checksum,
}

/// The footer's content: where the JSON starts and the checksum it promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub json_len: u32,
    pub crc: u32,
}

impl Footer {
    /// Reads the footer from the last [`FOOTER_LEN`] bytes of a file of `file_len` bytes.
    ///
    /// # Errors
    /// The bytes are not a footer, or name more JSON than the file holds.
    pub fn parse(tail: &[u8], file_len: u64) -> Result<Self, RecordError> {
        let tail: &[u8; FOOTER_LEN] = tail.try_into().map_err(|_| RecordError::NoFooter)?;
        if &tail[8..] != MAGIC {
            return Err(RecordError::NoFooter);
        }
        let json_len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(tail[4..8].try_into().expect("4 bytes"));
        if u64::from(json_len) + FOOTER_LEN as u64 > file_len {
            return Err(RecordError::NoFooter);
        }
        Ok(Self { json_len, crc })
    }

    /// Where the message ends (and the JSON starts) in a file of `file_len` bytes.
    pub fn body_len(&self, file_len: u64) -> u64 {
        file_len - u64::from(self.json_len) - FOOTER_LEN as u64
    }
}

/// Appends the metadata and the footer to `out`, whose checksum so far (`crc`) covers the whole
/// message.
pub fn finish(out: &mut Vec<u8>, mut crc: crc32fast::Hasher, json: &[u8]) {
    crc.update(json);
    let json_len = u32::try_from(json.len()).expect("entry metadata is far below 4 GiB");
    out.reserve(json.len() + FOOTER_LEN);
    out.extend_from_slice(json);
    out.extend_from_slice(&json_len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(MAGIC);
}

/// Splits a whole file into the message and its metadata, checking the checksum.
///
/// # Errors
/// The file has no footer or its checksum does not match.
pub fn split(file: &[u8]) -> Result<(&[u8], &[u8]), RecordError> {
    let footer_at = file
        .len()
        .checked_sub(FOOTER_LEN)
        .ok_or(RecordError::NoFooter)?;
    let footer = Footer::parse(&file[footer_at..], file.len() as u64)?;
    let (covered, _) = file.split_at(footer_at);
    if crc32fast::hash(covered) != footer.crc {
        return Err(RecordError::Checksum);
    }
    let body_len = footer.body_len(file.len() as u64) as usize;
    Ok(covered.split_at(body_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &[u8], json: &[u8]) -> Vec<u8> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(body);
        let mut out = body.to_vec();
        finish(&mut out, crc, json);
        out
    }

    #[test]
    fn a_record_splits_back_into_its_message_and_metadata() {
        for (body, json) in [
            (&b"Subject: x\r\n\r\nbody\r\n"[..], &br#"{"id":1}"#[..]),
            (b"", b"{}"),
            // A message that itself ends like a record: only the last footer counts.
            (&record(b"inner", b"{\"fake\":1}"), b"{\"real\":1}"),
        ] {
            assert_eq!(split(&record(body, json)), Ok((body, json)));
        }
    }

    #[test]
    fn a_cut_or_damaged_record_is_refused_with_the_reason() {
        let whole = record(b"Subject: x\r\n\r\nbody\r\n", b"{\"id\":1}");
        let mut flipped = whole.clone();
        flipped[3] ^= 0x20;
        let mut zeroed = whole.clone();
        zeroed[..8].fill(0);
        let mut too_long = whole.clone();
        let at = too_long.len() - FOOTER_LEN;
        too_long[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let cases: [(&str, &[u8], RecordError); 6] = [
            ("empty", b"", RecordError::NoFooter),
            (
                "message only",
                b"Subject: x\r\n\r\nbody\r\n",
                RecordError::NoFooter,
            ),
            (
                "cut inside the footer",
                &whole[..whole.len() - 1],
                RecordError::NoFooter,
            ),
            ("a flipped bit", &flipped, RecordError::Checksum),
            (
                "blocks never flushed (zeros)",
                &zeroed,
                RecordError::Checksum,
            ),
            ("a length past the start", &too_long, RecordError::NoFooter),
        ];
        for (name, file, expected) in cases {
            assert_eq!(split(file), Err(expected), "{name}");
        }
    }

    #[test]
    fn the_footer_alone_tells_where_the_metadata_starts() {
        let whole = record(b"0123456789", b"{\"a\":2}");
        let len = whole.len() as u64;
        let footer = Footer::parse(&whole[whole.len() - FOOTER_LEN..], len).unwrap();
        assert_eq!(footer.json_len, 7);
        assert_eq!(footer.body_len(len), 10);
    }
}
