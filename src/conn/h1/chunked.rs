//! Following a chunked body (RFC 9112 §7.1) without decoding it, on either side of the
//! connection.

/// Follows a chunked body the way hyper's decoder reads it, so that both agree on where the
/// message ends; whatever hyper's decoder rejects is an error here too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// The chunk size being read, then the chunk data left.
    size: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// First digit of a chunk size.
    #[default]
    Start,
    Size,
    /// Whitespace after the size.
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk's size line: a trailer field or the final CRLF.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// The encoding did not parse (hyper rejects it too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

// === impl Chunked ===

impl Chunked {
    /// Consumes the encoding in `data`: how many bytes, and whether the body ended there.
    pub(crate) fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), Malformed> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            if self.state == Data {
                let take = self.size.min((data.len() - i) as u64);
                i += take as usize;
                self.size -= take;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (Start, b) => {
                    self.size = u64::from(hex(b).ok_or(Malformed)?);
                    Size
                }
                (Size, b) if hex(b).is_some() => {
                    let d = u64::from(hex(b).ok_or(Malformed)?);
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(d))
                        .ok_or(Malformed)?;
                    Size
                }
                (Size | SizeLws, b' ' | b'\t') => SizeLws,
                (Size | SizeLws, b';') => Extension,
                (Size | SizeLws, b'\r') => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(Malformed),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => EndCr,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Start,
                (EndCr, b'\r') => EndLf,
                (EndCr, _) => Trailer,
                (Trailer, b'\r') => TrailerLf,
                (Trailer, _) => Trailer,
                (TrailerLf, b'\n') => EndCr,
                (EndLf, b'\n') => {
                    *self = Self::default();
                    return Ok((i, true));
                }
                _ => return Err(Malformed),
            };
        }
        Ok((i, false))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
