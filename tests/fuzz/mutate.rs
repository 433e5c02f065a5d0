//! Seeded mutations of corpus inputs: byte flips and interesting values, splices with other
//! inputs, truncations, insertions from a dictionary (for text formats), and forged GGUF
//! fields (counts, lengths, types, dimensions, offsets), found by walking the file's layout.

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

pub struct Mutator {
    rng: Xoshiro256PlusPlus,
}

/// How a target's inputs are shaped, for the mutations that know it.
#[derive(Clone, Copy)]
pub enum Shape {
    Binary,
    Gguf,
    /// Text: insertions come from the dictionary.
    Text(&'static [&'static str]),
}

const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    3,
    4,
    0x7f,
    0xff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    pub fn u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A mutant of `base` (1 to 4 stacked mutations); `others` are splice partners.
    pub fn mutate(&mut self, base: &[u8], others: &[Vec<u8>], shape: Shape) -> Vec<u8> {
        let mut out = base.to_vec();
        for _ in 0..1 + self.below(4) {
            self.once(&mut out, others, shape);
        }
        out
    }

    fn once(&mut self, b: &mut Vec<u8>, others: &[Vec<u8>], shape: Shape) {
        let structured = match shape {
            Shape::Gguf => self.below(2) == 0 && self.forge_gguf_field(b),
            Shape::Text(dict) if self.below(2) == 0 => {
                self.insert_word(b, dict);
                true
            }
            _ => false,
        };
        if structured {
            return;
        }
        let len = b.len();
        match self.below(8) {
            0 if len > 0 => {
                let i = self.below(len);
                b[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let i = self.below(len);
                b[i] = INTERESTING[self.below(INTERESTING.len())] as u8;
            }
            2 if len >= 8 => {
                let i = self.below(len - 7);
                let v = self.interesting_near(u64::from_le_bytes(b[i..i + 8].try_into().unwrap()));
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            3 if len > 0 => b.truncate(self.below(len)),
            4 if len > 0 => {
                // delete a range
                let (s, n) = self.range(len);
                b.drain(s..s + n);
            }
            5 if len > 0 => {
                // duplicate a range somewhere
                let (s, n) = self.range(len);
                let chunk = b[s..s + n].to_vec();
                let at = self.below(len + 1);
                b.splice(at..at, chunk);
            }
            6 if !others.is_empty() => {
                // splice: a prefix of this input, then a suffix of another
                let other = &others[self.below(others.len())];
                let cut = self.below(len + 1);
                let from = self.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let i = self.below(len);
                b[i] = self.u64() as u8;
            }
            _ => b.push(self.u64() as u8),
        }
    }

    /// A random range of at most 1/4 of `len` (at least 1 byte), as (start, length).
    fn range(&mut self, len: usize) -> (usize, usize) {
        let n = 1 + self.below((len / 4).max(1));
        let s = self.below(len - n.min(len) + 1);
        (s, n.min(len - s))
    }

    /// A value a parser might mishandle, near `old` or from the interesting list.
    fn interesting_near(&mut self, old: u64) -> u64 {
        match self.below(5) {
            0 => old.wrapping_add(1 + self.below(16) as u64),
            1 => old.wrapping_sub(1 + self.below(16) as u64),
            2 => old.wrapping_mul(2 + self.below(1000) as u64),
            3 => self.u64() >> self.below(64),
            _ => INTERESTING[self.below(INTERESTING.len())],
        }
    }

    fn insert_word(&mut self, b: &mut Vec<u8>, dict: &[&str]) {
        let word = dict[self.below(dict.len())].as_bytes();
        let at = self.below(b.len() + 1);
        if self.below(3) == 0 && at < b.len() {
            // replace what follows
            let n = self.below((b.len() - at).min(32) + 1);
            b.splice(at..at + n, word.iter().copied());
        } else {
            b.splice(at..at, word.iter().copied());
        }
    }

    /// Overwrites one numeric field of a GGUF's layout (a count, a length, a type, a dimension,
    /// an offset) with a forged value; false when the input has no recognisable field.
    fn forge_gguf_field(&mut self, b: &mut [u8]) -> bool {
        let fields = gguf_fields(b);
        if fields.is_empty() {
            return false;
        }
        let (at, width) = fields[self.below(fields.len())];
        let old = if width == 8 {
            u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
        } else {
            u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64
        };
        let new = match self.below(4) {
            0 => b.len() as u64 - self.below(64.min(b.len())) as u64,
            _ => self.interesting_near(old),
        };
        if width == 8 {
            b[at..at + 8].copy_from_slice(&new.to_le_bytes());
        } else {
            b[at..at + 4].copy_from_slice(&(new as u32).to_le_bytes());
        }
        true
    }
}

/// The numeric fields of a GGUF's header, metadata and tensor table, as (offset, width), as
/// far as the layout can be followed. A walker of its own (not the library's reader): it must
/// keep going where the reader would refuse.
pub fn gguf_fields(b: &[u8]) -> Vec<(usize, usize)> {
    let mut w = Walker {
        b,
        pos: 4,
        fields: Vec::new(),
    };
    if b.get(..4) == Some(b"GGUF") {
        let _ = w.header();
    }
    w.fields
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<(usize, usize)>,
}

impl Walker<'_> {
    fn num(&mut self, width: usize, record: bool) -> Option<u64> {
        let bytes = self.b.get(self.pos..self.pos.checked_add(width)?)?;
        if record {
            self.fields.push((self.pos, width));
        }
        self.pos += width;
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(bytes);
        Some(u64::from_le_bytes(v))
    }

    fn string(&mut self) -> Option<()> {
        let n = self.num(8, true)? as usize;
        self.pos = self.pos.checked_add(n).filter(|&e| e <= self.b.len())?;
        Some(())
    }

    fn value(&mut self, ty: u64, record: bool) -> Option<()> {
        let width = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string(),
            9 => {
                let elem = self.num(4, true)?;
                let n = self.num(8, true)?;
                // record the fields of the first few elements only
                for i in 0..n.min(self.b.len() as u64) {
                    self.value(elem, i < 4)?;
                }
                return Some(());
            }
            _ => return None,
        };
        self.num(width, record && width >= 4).map(|_| ())
    }

    fn header(&mut self) -> Option<()> {
        self.num(4, true)?; // version
        let n_tensors = self.num(8, true)?;
        let n_kv = self.num(8, true)?;
        for _ in 0..n_kv.min(self.b.len() as u64) {
            self.string()?;
            let ty = self.num(4, true)?;
            self.value(ty, true)?;
        }
        for _ in 0..n_tensors.min(self.b.len() as u64) {
            self.string()?;
            let dims = self.num(4, true)?;
            for _ in 0..dims.min(8) {
                self.num(8, true)?;
            }
            self.num(4, true)?; // type
            self.num(8, true)?; // offset
        }
        Some(())
    }
}
