//! MD5 (RFC 1321), only to check attachments against the `md5-` digests
//! CouchDB keeps for them: CouchDB chose the algorithm, and a digest that
//! does not match means the bytes are not what the server stored. Nothing
//! here is used for security.

/// A running MD5.
#[derive(Clone)]
pub struct Md5 {
    state: [u32; 4],
    /// Bytes fed so far.
    len: u64,
    block: [u8; 64],
    /// Bytes waiting in `block`.
    filled: usize,
}

/// `floor(abs(sin(i + 1)) * 2^32)`.
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

impl Default for Md5 {
    fn default() -> Self {
        Md5 {
            state: [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476],
            len: 0,
            block: [0; 64],
            filled: 0,
        }
    }
}

impl Md5 {
    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.filled > 0 {
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 64 {
                return;
            }
            let block = self.block;
            self.compress(&block);
            self.filled = 0;
        }
        let mut chunks = data.chunks_exact(64);
        for chunk in &mut chunks {
            self.compress(chunk.try_into().expect("64 bytes"));
        }
        let rest = chunks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    pub fn finish(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = vec![0x80u8];
        tail.resize((64 + 56 - (self.filled + 1) % 64) % 64 + 1, 0);
        tail.extend_from_slice(&bits.to_le_bytes());
        let len = self.len;
        self.update(&tail);
        self.len = len;
        debug_assert_eq!(self.filled, 0);
        let mut out = [0u8; 16];
        for (i, word) in self.state.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// One 64-byte block: the 64 steps of RFC 1321 written out, so that
    /// even a lightly optimized (test) build hashes at a useful speed.
    fn compress(&mut self, block: &[u8; 64]) {
        let mut m = [0u32; 16];
        for (i, w) in m.iter_mut().enumerate() {
            *w = u32::from_le_bytes([
                block[i * 4],
                block[i * 4 + 1],
                block[i * 4 + 2],
                block[i * 4 + 3],
            ]);
        }
        let [mut a, mut b, mut c, mut d] = self.state;
        // Every index a constant: no bounds checks, whatever the build.
        // Step n works on (a, b, c, d) turned right n times.
        macro_rules! op {
            ($fun:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
                $a = step($a, $fun($b, $c, $d), m[$m], K[$k], $s, $b);
            };
        }
        op!(f, a, b, c, d, 0, 0, 7);
        op!(f, d, a, b, c, 1, 1, 12);
        op!(f, c, d, a, b, 2, 2, 17);
        op!(f, b, c, d, a, 3, 3, 22);
        op!(f, a, b, c, d, 4, 4, 7);
        op!(f, d, a, b, c, 5, 5, 12);
        op!(f, c, d, a, b, 6, 6, 17);
        op!(f, b, c, d, a, 7, 7, 22);
        op!(f, a, b, c, d, 8, 8, 7);
        op!(f, d, a, b, c, 9, 9, 12);
        op!(f, c, d, a, b, 10, 10, 17);
        op!(f, b, c, d, a, 11, 11, 22);
        op!(f, a, b, c, d, 12, 12, 7);
        op!(f, d, a, b, c, 13, 13, 12);
        op!(f, c, d, a, b, 14, 14, 17);
        op!(f, b, c, d, a, 15, 15, 22);
        op!(g, a, b, c, d, 1, 16, 5);
        op!(g, d, a, b, c, 6, 17, 9);
        op!(g, c, d, a, b, 11, 18, 14);
        op!(g, b, c, d, a, 0, 19, 20);
        op!(g, a, b, c, d, 5, 20, 5);
        op!(g, d, a, b, c, 10, 21, 9);
        op!(g, c, d, a, b, 15, 22, 14);
        op!(g, b, c, d, a, 4, 23, 20);
        op!(g, a, b, c, d, 9, 24, 5);
        op!(g, d, a, b, c, 14, 25, 9);
        op!(g, c, d, a, b, 3, 26, 14);
        op!(g, b, c, d, a, 8, 27, 20);
        op!(g, a, b, c, d, 13, 28, 5);
        op!(g, d, a, b, c, 2, 29, 9);
        op!(g, c, d, a, b, 7, 30, 14);
        op!(g, b, c, d, a, 12, 31, 20);
        op!(h, a, b, c, d, 5, 32, 4);
        op!(h, d, a, b, c, 8, 33, 11);
        op!(h, c, d, a, b, 11, 34, 16);
        op!(h, b, c, d, a, 14, 35, 23);
        op!(h, a, b, c, d, 1, 36, 4);
        op!(h, d, a, b, c, 4, 37, 11);
        op!(h, c, d, a, b, 7, 38, 16);
        op!(h, b, c, d, a, 10, 39, 23);
        op!(h, a, b, c, d, 13, 40, 4);
        op!(h, d, a, b, c, 0, 41, 11);
        op!(h, c, d, a, b, 3, 42, 16);
        op!(h, b, c, d, a, 6, 43, 23);
        op!(h, a, b, c, d, 9, 44, 4);
        op!(h, d, a, b, c, 12, 45, 11);
        op!(h, c, d, a, b, 15, 46, 16);
        op!(h, b, c, d, a, 2, 47, 23);
        op!(i, a, b, c, d, 0, 48, 6);
        op!(i, d, a, b, c, 7, 49, 10);
        op!(i, c, d, a, b, 14, 50, 15);
        op!(i, b, c, d, a, 5, 51, 21);
        op!(i, a, b, c, d, 12, 52, 6);
        op!(i, d, a, b, c, 3, 53, 10);
        op!(i, c, d, a, b, 10, 54, 15);
        op!(i, b, c, d, a, 1, 55, 21);
        op!(i, a, b, c, d, 8, 56, 6);
        op!(i, d, a, b, c, 15, 57, 10);
        op!(i, c, d, a, b, 6, 58, 15);
        op!(i, b, c, d, a, 13, 59, 21);
        op!(i, a, b, c, d, 4, 60, 6);
        op!(i, d, a, b, c, 11, 61, 10);
        op!(i, c, d, a, b, 2, 62, 15);
        op!(i, b, c, d, a, 9, 63, 21);
        for (s, v) in self.state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }
}

#[inline(always)]
fn step(a: u32, fx: u32, m: u32, k: u32, s: u32, b: u32) -> u32 {
    b.wrapping_add(
        a.wrapping_add(fx)
            .wrapping_add(m)
            .wrapping_add(k)
            .rotate_left(s),
    )
}

#[inline(always)]
fn f(x: u32, y: u32, z: u32) -> u32 {
    (x & y) | (!x & z)
}

#[inline(always)]
fn g(x: u32, y: u32, z: u32) -> u32 {
    (x & z) | (y & !z)
}

#[inline(always)]
fn h(x: u32, y: u32, z: u32) -> u32 {
    x ^ y ^ z
}

#[inline(always)]
fn i(x: u32, y: u32, z: u32) -> u32 {
    y ^ (x | !z)
}

/// A digest as CouchDB writes it: `md5-` and the base64 of the 16 bytes.
pub fn couch_digest(md5: [u8; 16]) -> String {
    use base64::Engine;
    format!(
        "md5-{}",
        base64::engine::general_purpose::STANDARD.encode(md5)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(data: &[u8]) -> String {
        let mut m = Md5::default();
        m.update(data);
        m.finish().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rfc_1321_test_suite() {
        assert_eq!(hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(b"a"), "0cc175b9c0f1b6a831c399e269772661");
        assert_eq!(hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex(b"message digest"), "f96b697d7cb7938d525a2f31aaf161d0");
        assert_eq!(
            hex(b"abcdefghijklmnopqrstuvwxyz"),
            "c3fcd3d76192e4007dfb496cca67e13b"
        );
        assert_eq!(
            hex(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
            "d174ab98d277d9f5a5611c2c9f419d9f"
        );
        assert_eq!(
            hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn pieces_of_any_size_give_the_same_digest() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = {
            let mut m = Md5::default();
            m.update(&data);
            m.finish()
        };
        for step in [1, 3, 55, 56, 63, 64, 65, 127, 1000] {
            let mut m = Md5::default();
            for piece in data.chunks(step) {
                m.update(piece);
            }
            assert_eq!(m.finish(), whole, "step {step}");
        }
        // What CouchDB stored for 300,000 bytes is checked end to end in
        // tests/couchdb.rs; here one known digest in its own format.
        let mut m = Md5::default();
        m.update(b"abc");
        assert_eq!(couch_digest(m.finish()), "md5-kAFQmDzST7DWlj99KOF/cg==");
    }
}
