//! A packet inside its buffer, with headroom to grow into (encapsulation) and to give back
//! (decapsulation), like an skb's `data`/`len` inside `head`..`end`.

/// `chunk[head..head + len]` is the packet; `chunk[..head]` is headroom.
#[derive(Debug)]
pub struct Buf<'a> {
    chunk: &'a mut [u8],
    head: usize,
    len: usize,
}

impl<'a> Buf<'a> {
    /// Panics if `head + len` exceeds the chunk (callers pass what the ring validated).
    #[inline]
    pub fn new(chunk: &'a mut [u8], head: usize, len: usize) -> Self {
        assert!(head + len <= chunk.len());
        Buf { chunk, head, len }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.chunk[self.head..self.head + self.len]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.chunk[self.head..self.head + self.len]
    }

    #[inline]
    pub fn head(&self) -> usize {
        self.head
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free bytes in front of the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Free bytes behind the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.chunk.len() - self.head - self.len
    }

    /// Grow the packet by `n` bytes at the front; false (and unchanged) without headroom.
    #[inline]
    pub fn push_head(&mut self, n: usize) -> bool {
        if n > self.head {
            return false;
        }
        self.head -= n;
        self.len += n;
        true
    }

    /// Drop `n` bytes from the front; false (and unchanged) if the packet is shorter.
    #[inline]
    pub fn pull_head(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Set the length (trim Ethernet padding, or grow into tailroom); false if it does not fit.
    #[inline]
    pub fn set_len(&mut self, len: usize) -> bool {
        if self.head + len > self.chunk.len() {
            return false;
        }
        self.len = len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_pull_and_bounds() {
        let mut mem = [0u8; 64];
        mem[16..20].copy_from_slice(&[1, 2, 3, 4]);
        let mut b = Buf::new(&mut mem, 16, 4);
        assert_eq!(b.data(), &[1, 2, 3, 4]);
        assert!(b.push_head(2));
        assert_eq!(b.data(), &[0, 0, 1, 2, 3, 4]);
        assert!(!b.push_head(15), "only 14 bytes of headroom left");
        assert_eq!(b.len(), 6);
        assert!(b.pull_head(3));
        assert_eq!(b.data(), &[2, 3, 4]);
        assert!(!b.pull_head(4));
        assert!(b.set_len(2));
        assert_eq!(b.data(), &[2, 3]);
        assert!(!b.set_len(64));
        assert_eq!(b.tailroom(), 64 - 17 - 2);
    }
}
