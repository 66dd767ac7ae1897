//! Hashed word unigram and bigram counts: the features of DSIR and of the quality classifier.
//!
//! Words are split as NLTK's `WordPunctTokenizer` splits them (the regex `\w+|[^\w\s]+`) from the
//! lower-cased text: runs of word characters (letters, digits, `_`) and runs of other non-space
//! characters. Each word and each pair of adjacent words (`"w1 w2"`) is hashed (64-bit FNV-1a,
//! [`crate::hash`]) into one of `buckets` buckets: the features of DSIR's `HashedNgramDSIR`
//! (unigrams and bigrams, 10,000 buckets by default) with our hash in place of its sha256.

use crate::hash::fnv1a;

/// One document's features: `(bucket, count)`, buckets ascending, each once.
pub type Counts = Vec<(u32, u32)>;

/// The hashed unigram+bigram featurizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashedNgrams {
    buckets: u32,
}

/// What a character is to the word-punct split.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    Punct,
    Space,
}

fn class(c: char) -> Class {
    if c.is_alphanumeric() || c == '_' {
        Class::Word
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Punct
    }
}

/// The words of `text` (lower-cased), split as `\w+|[^\w\s]+`.
pub fn words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    let mut start: Option<(usize, Class)> = None;
    for (i, c) in lower.char_indices() {
        let k = class(c);
        if let Some((s, prev)) = start {
            if prev == k {
                continue;
            }
            out.push(lower[s..i].to_string());
        }
        start = (k != Class::Space).then_some((i, k));
    }
    if let Some((s, _)) = start {
        out.push(lower[s..].to_string());
    }
    out
}

impl HashedNgrams {
    /// The paper's (and the `data-selection` package's) bucket count.
    pub const DEFAULT_BUCKETS: u32 = 10_000;
    /// The most buckets accepted: a dense model of the target and the raw pool is 16 bytes a
    /// bucket, so this keeps both within 64 MiB.
    pub const MAX_BUCKETS: u32 = 1 << 22;

    /// A featurizer with `buckets` in `1..=MAX_BUCKETS`, or the reason it is not one.
    pub fn new(buckets: u32) -> Result<Self, String> {
        if (1..=Self::MAX_BUCKETS).contains(&buckets) {
            Ok(Self { buckets })
        } else {
            Err(format!("ngram buckets {buckets}: must be between 1 and {}", Self::MAX_BUCKETS))
        }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    fn bucket(&self, h: u64) -> u32 {
        (h % self.buckets as u64) as u32
    }

    /// The document's bucket counts: one per word, one per adjacent pair.
    pub fn counts(&self, text: &str) -> Counts {
        let w = words(text);
        let mut hits: Vec<u32> = Vec::with_capacity(2 * w.len());
        hits.extend(w.iter().map(|x| self.bucket(fnv1a(&[x.as_bytes()]))));
        hits.extend(w.windows(2).map(|p| self.bucket(fnv1a(&[p[0].as_bytes(), b" ", p[1].as_bytes()]))));
        hits.sort_unstable();
        let mut out: Counts = Vec::new();
        for b in hits {
            match out.last_mut() {
                Some((last, n)) if *last == b => *n += 1,
                _ => out.push((b, 1)),
            }
        }
        out
    }

    /// Adds a document's counts into a dense total (one slot per bucket).
    pub fn accumulate(total: &mut [u64], counts: &Counts) {
        for &(b, n) in counts {
            total[b as usize] += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_as_word_punct() {
        assert_eq!(words("Hello, World!  It's 3.14_x"), ["hello", ",", "world", "!", "it", "'", "s", "3", ".", "14_x"]);
        assert_eq!(words("  "), Vec::<String>::new());
        assert_eq!(words("a--b ...c"), ["a", "--", "b", "...", "c"]);
        assert_eq!(words("Ünïcode Straße"), ["ünïcode", "straße"]);
    }

    /// The counts against a direct computation: every word and adjacent pair hashed on its own.
    #[test]
    fn counts_are_the_hashed_unigrams_and_bigrams() {
        let f = HashedNgrams::new(97).unwrap();
        let text = "the cat saw the cat. The end";
        let w = words(text);
        let mut direct = vec![0u32; 97];
        for x in &w {
            direct[(fnv1a(&[x.as_bytes()]) % 97) as usize] += 1;
        }
        for p in w.windows(2) {
            direct[(fnv1a(&[format!("{} {}", p[0], p[1]).as_bytes()]) % 97) as usize] += 1;
        }
        let got = f.counts(text);
        assert!(got.windows(2).all(|p| p[0].0 < p[1].0), "buckets ascending, each once");
        let mut dense = vec![0u32; 97];
        for (b, n) in got {
            dense[b as usize] = n;
        }
        assert_eq!(dense, direct);
        assert_eq!(dense.iter().sum::<u32>() as usize, 2 * w.len() - 1);
    }

    #[test]
    fn bucket_counts_are_checked() {
        assert!(HashedNgrams::new(0).is_err());
        assert!(HashedNgrams::new(HashedNgrams::MAX_BUCKETS + 1).is_err());
        assert!(HashedNgrams::new(1).unwrap().counts("a b c").iter().all(|&(b, _)| b == 0));
    }
}
