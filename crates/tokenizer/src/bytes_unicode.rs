//! GPT-2's reversible map between bytes and printable characters (`bytes_to_unicode` in OpenAI's
//! `encoder.py`), used by `encoder.json`, `vocab.json`, `merges.txt` and `tokenizer.json` to write
//! token bytes as text: printable Latin-1 bytes stand for themselves, the other 68 bytes map to
//! U+0100 onwards, in byte order.
use std::sync::OnceLock;

fn tables() -> &'static ([char; 256], [u8; 324]) {
    static T: OnceLock<([char; 256], [u8; 324])> = OnceLock::new();
    T.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut to_char = ['\0'; 256];
        let mut to_byte = [0u8; 324];
        let mut n = 0u32;
        for b in 0..=255u8 {
            let u = if printable(b) {
                b as u32
            } else {
                n += 1;
                255 + n
            };
            to_char[b as usize] = char::from_u32(u).unwrap_or('\0');
            to_byte[u as usize] = b;
        }
        (to_char, to_byte)
    })
}

/// The text form of token bytes.
pub fn encode(bytes: &[u8]) -> String {
    let to_char = &tables().0;
    bytes.iter().map(|&b| to_char[b as usize]).collect()
}

/// The bytes of a token's text form, or the first character that is not in the map.
pub fn decode(text: &str) -> Result<Vec<u8>, char> {
    let (to_char, to_byte) = tables();
    text.chars()
        .map(|c| {
            let u = c as usize;
            match to_byte.get(u) {
                Some(&b) if to_char[b as usize] == c => Ok(b),
                _ => Err(c),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let text = super::encode(&all);
        assert_eq!(text.chars().count(), 256);
        assert_eq!(super::decode(&text).unwrap(), all);
        assert_eq!(super::encode(b" the\n"), "\u{120}the\u{10a}");
        assert_eq!(super::decode("a\u{3000}"), Err('\u{3000}'));
    }
}
