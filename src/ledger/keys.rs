//! Idempotency keys, kept for good without memory growing with history.
//!
//! Every key is in the journal's unique index. An account keeps its
//! recent keys whole in memory (between [`KEY_GENERATION`] and twice that
//! many), with the first answer each got; an older key is kept only as a
//! few bits of a Bloom filter. A key that is not in memory and that the
//! filter does not know is new: no database read on the hot path. A key
//! the filter may know is looked up in the journal by the writer before
//! the command runs ([`Keys::maybe_past`]), and its stored first answer
//! comes back from there.

use hashbrown::HashMap;

use fastbloom::BloomFilter;
use serde::{Deserialize, Serialize};

use super::model::{Charge, UsageReceipt};

/// Keys an account keeps whole in a generation: when the newer of its two
/// generations is full, the older one goes into the filters. Far more
/// than one batch, so a key leaves memory long after its commit.
pub const KEY_GENERATION: usize = 65_536;
const _: () = assert!(KEY_GENERATION >= 4 * super::writer::MAX_BATCH);

/// Chance that a new key needs a look in the journal, per filter.
const FALSE_POSITIVE: f64 = 0.001;
/// Keys the first filter holds; each next one holds twice as many.
const FIRST_FILTER: u64 = 2 * KEY_GENERATION as u64;
/// The filters' hasher is never used (keys arrive hashed), but it is
/// fixed so that a restored filter is the same value as the stored one.
const SEED: u128 = 0x6372_6564_6974_2d6b_6579_732d_7631;

/// What an idempotency key answered the first time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAnswer {
    Usage(UsageReceipt),
    Hold(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub fingerprint: Fingerprint,
    pub answer: KeyAnswer,
}

impl KeyRecord {
    /// The part of the first answer the journal row keeps beside the
    /// event (the rest is in the event): a usage's member figures.
    pub fn stored_answer(&self) -> Option<StoredAnswer> {
        match &self.answer {
            KeyAnswer::Usage(r) => Some(StoredAnswer {
                used: r.member_used,
                remaining: r.member_remaining,
            }),
            KeyAnswer::Hold(_) => None,
        }
    }
}

/// A usage's member figures right after it, kept beside its journal row
/// as the text `"USED REMAINING"` (written by the commit thread, so the
/// writer never formats a number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAnswer {
    pub used: crate::amount::Amount,
    pub remaining: crate::amount::Amount,
}

impl StoredAnswer {
    pub fn text(&self) -> String {
        format!("{} {}", self.used, self.remaining)
    }

    pub fn parse(text: &str) -> Option<StoredAnswer> {
        let (used, remaining) = text.split_once(' ')?;
        let read = |s: &str| crate::amount::Amount::parse_record(s).ok();
        Some(StoredAnswer {
            used: read(used)?,
            remaining: read(remaining)?,
        })
    }

    /// The receipt this answer was part of.
    pub fn receipt(&self, credits: crate::amount::Amount) -> UsageReceipt {
        UsageReceipt {
            duplicate: false,
            credits,
            member_used: self.used,
            member_remaining: self.remaining,
        }
    }
}

impl Serialize for StoredAnswer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> Deserialize<'de> for StoredAnswer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StoredAnswer::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("not an answer: {text:?}")))
    }
}

/// What idempotency compares: the body's decimal values, not its text.
/// The member is compared exactly by its row in the account's member
/// table (rows are never removed: a row is one user id), four bytes a key.
/// The labels are kept as a stable 64-bit hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// 0 usage, 1 hold.
    pub kind: u8,
    /// A stable hash of the member id: only in records of older snapshots
    /// (0 otherwise), which have no `row`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub member: u64,
    /// The member's row; [`NO_ROW`] in records of older snapshots.
    #[serde(default = "no_row", skip_serializing_if = "is_no_row")]
    pub row: u32,
    pub charge: Charge,
    /// Seconds (a hold's lifetime is at most a week).
    pub ttl: u32,
    /// [`super::costs::Labels::digest`]; 0 without labels (and in older
    /// snapshots).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub labels: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// No member row: a fingerprint from before rows were recorded.
pub const NO_ROW: u32 = u32::MAX;

fn no_row() -> u32 {
    NO_ROW
}

fn is_no_row(row: &u32) -> bool {
    *row == NO_ROW
}

impl Fingerprint {
    /// The fingerprint of a request by `member`, whose row is `row`.
    pub fn new(kind: u8, member: &str, row: Option<u32>, charge: Charge, ttl: u64, labels: u64) -> Fingerprint {
        let (member, row) = match row {
            Some(row) => (0, row),
            // Not enrolled: no row can match, the hash is all there is.
            None => (stable_hash(member), NO_ROW),
        };
        Fingerprint {
            kind,
            member,
            row,
            charge,
            // A week fits; anything longer was refused before it got here.
            ttl: u32::try_from(ttl).unwrap_or(u32::MAX),
            labels,
        }
    }

    /// Whether `now` (a retry by `member`) is the request this record
    /// answered: exactly by row, or by the member's hash for a record from
    /// an older snapshot.
    pub fn matches(&self, member: &str, now: &Fingerprint) -> bool {
        if self.row == NO_ROW {
            *self
                == Fingerprint {
                    member: stable_hash(member),
                    row: NO_ROW,
                    ..*now
                }
        } else {
            self == now
        }
    }
}

/// FNV-1a: stable across builds, unlike the standard library's hasher.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A key as the filters see it: FNV-1a, then MurmurHash3's finalizer so
/// that every bit depends on every byte (the filters index by the high
/// bits).
fn key_hash(key: &str) -> u64 {
    let mut h = stable_hash(key);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One account's idempotency keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Keys {
    recent: HashMap<String, KeyRecord>,
    older: HashMap<String, KeyRecord>,
    past: Vec<Filter>,
}

impl Keys {
    /// The record of a key still in memory.
    pub fn get(&self, key: &str) -> Option<&KeyRecord> {
        self.recent.get(key).or_else(|| self.older.get(key))
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut KeyRecord> {
        match self.recent.get_mut(key) {
            Some(record) => Some(record),
            None => self.older.get_mut(key),
        }
    }

    /// Records a new key. When the newer generation is full, the older one
    /// leaves memory for the filters and the newer one takes its place.
    pub fn insert(&mut self, key: String, record: KeyRecord) {
        if self.recent.len() >= KEY_GENERATION && !self.recent.contains_key(&key) {
            std::mem::swap(&mut self.recent, &mut self.older);
            for (old, _) in self.recent.drain() {
                remember(&mut self.past, key_hash(&old));
            }
        }
        self.recent.insert(key, record);
    }

    /// Whether `key` may be an older key that only the journal still
    /// holds whole. `false` means it is new, or in memory.
    pub fn maybe_past(&self, key: &str) -> bool {
        self.in_filters(key) && self.get(key).is_none()
    }

    /// Whether the filters may know `key` ([`Keys::maybe_past`] for a key
    /// the caller found not in memory).
    pub fn in_filters(&self, key: &str) -> bool {
        if self.past.is_empty() {
            return false;
        }
        let hash = key_hash(key);
        self.past.iter().rev().any(|f| f.bloom.contains_hash(hash))
    }

    /// Keys whole in memory.
    pub fn in_memory(&self) -> usize {
        self.recent.len() + self.older.len()
    }

    /// Bytes the filters hold.
    pub fn filter_bytes(&self) -> u64 {
        self.past.iter().map(|f| f.bloom.num_bits() as u64 / 8).sum()
    }

    /// Keys that left memory for the filters.
    pub fn past(&self) -> u64 {
        self.past.iter().map(|f| f.len).sum()
    }
}

/// Adds a hash to the newest filter, starting a twice larger one when it
/// is full.
fn remember(filters: &mut Vec<Filter>, hash: u64) {
    if filters.last().is_none_or(|f| f.len >= f.capacity) {
        let capacity = filters.last().map_or(FIRST_FILTER, |f| f.capacity.saturating_mul(2));
        filters.push(Filter::new(capacity));
    }
    if let Some(f) = filters.last_mut() {
        f.bloom.insert_hash(hash);
        f.len += 1;
    }
}

/// A Bloom filter of keys that left memory, sized for `capacity` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    capacity: u64,
    len: u64,
    bloom: BloomFilter,
}

impl Filter {
    fn new(capacity: u64) -> Filter {
        Filter {
            capacity,
            len: 0,
            bloom: BloomFilter::with_false_pos(FALSE_POSITIVE)
                .seed(&SEED)
                .expected_items(usize::try_from(capacity).unwrap_or(usize::MAX)),
        }
    }
}

/// A filter as a snapshot stores it.
#[derive(Serialize, Deserialize)]
struct StoredFilter {
    capacity: u64,
    len: u64,
    hashes: u32,
    bits: Vec<u64>,
}

impl Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredFilter {
            capacity: self.capacity,
            len: self.len,
            hashes: self.bloom.num_hashes(),
            bits: self.bloom.as_slice().to_vec(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = StoredFilter::deserialize(deserializer)?;
        if stored.bits.is_empty() || stored.hashes == 0 {
            return Err(serde::de::Error::custom("a key filter without bits or hashes"));
        }
        Ok(Filter {
            capacity: stored.capacity,
            len: stored.len,
            bloom: BloomFilter::from_vec(stored.bits).seed(&SEED).hashes(stored.hashes),
        })
    }
}

/// Snapshots before the filters kept every key in one map.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredKeys {
    Window {
        recent: HashMap<String, KeyRecord>,
        older: HashMap<String, KeyRecord>,
        past: Vec<Filter>,
    },
    Every(HashMap<String, KeyRecord>),
}

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match StoredKeys::deserialize(deserializer)? {
            StoredKeys::Window { recent, older, past } => Keys { recent, older, past },
            StoredKeys::Every(all) => {
                // Their order is lost; every one is kept all the same.
                let mut keys = Keys::default();
                let mut all: Vec<_> = all.into_iter().collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                for (key, record) in all {
                    keys.insert(key, record);
                }
                keys
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amount::Amount;

    fn record(i: u64) -> KeyRecord {
        KeyRecord {
            fingerprint: Fingerprint::new(0, "u", Some(0), Charge::Credits(Amount::from_int(i as i64)), 0, 0),
            answer: KeyAnswer::Hold(format!("hold-{i}")),
        }
    }

    #[test]
    fn keys_past_the_window_leave_memory_and_the_filters_still_know_every_one() {
        let mut keys = Keys::default();
        let total = 3 * KEY_GENERATION as u64 + 10;
        for i in 0..total {
            keys.insert(format!("k{i}"), record(i));
        }
        // Whole in memory: the newest 10 and the 65,536 before them; the
        // two generations before those went to one filter.
        assert_eq!(keys.in_memory(), KEY_GENERATION + 10);
        assert_eq!(keys.past(), 2 * KEY_GENERATION as u64);
        assert_eq!(keys.past.len(), 1);
        assert!(keys.get("k0").is_none());
        assert!(keys.get(&format!("k{}", 2 * KEY_GENERATION - 1)).is_none());
        assert_eq!(
            keys.get(&format!("k{}", 2 * KEY_GENERATION)),
            Some(&record(2 * KEY_GENERATION as u64))
        );
        assert_eq!(keys.get(&format!("k{}", total - 1)), Some(&record(total - 1)));
        // No key that left memory is ever missed.
        assert!((0..2 * KEY_GENERATION).all(|i| keys.maybe_past(&format!("k{i}"))));
        // Keys in memory are never sent to the journal.
        assert!(!keys.maybe_past(&format!("k{}", 2 * KEY_GENERATION)));
        assert!(!keys.maybe_past(&format!("k{}", total - 1)));
        // New keys rarely are: about 0.1 %, here at most 0.5 %.
        let false_hits = (0..100_000).filter(|i| keys.maybe_past(&format!("new-{i}"))).count();
        assert!(false_hits <= 500, "{false_hits} of 100,000 new keys looked past");
    }

    #[test]
    fn filters_double_and_round_trip_through_a_snapshot() {
        let mut filters = Vec::new();
        for i in 0..(FIRST_FILTER * 3 + 1) {
            remember(&mut filters, key_hash(&format!("k{i}")));
        }
        let capacities: Vec<u64> = filters.iter().map(|f| f.capacity).collect();
        assert_eq!(capacities, vec![FIRST_FILTER, 2 * FIRST_FILTER, 4 * FIRST_FILTER]);
        assert_eq!(filters.iter().map(|f| f.len).sum::<u64>(), FIRST_FILTER * 3 + 1);
        let keys = Keys {
            recent: HashMap::from([("a".to_string(), record(1))]),
            older: HashMap::from([("b".to_string(), record(2))]),
            past: filters,
        };
        let restored: Keys = serde_json::from_str(&serde_json::to_string(&keys).unwrap()).unwrap();
        assert_eq!(restored, keys);
        assert!(restored.maybe_past("k7"));
    }

    #[test]
    fn a_snapshot_from_before_the_window_keeps_every_key() {
        let old = serde_json::json!({
            "a": record(1),
            "recent": record(2),
        });
        let keys: Keys = serde_json::from_value(old).unwrap();
        assert_eq!(keys.get("a"), Some(&record(1)));
        assert_eq!(keys.get("recent"), Some(&record(2)));
        assert_eq!(keys.past(), 0);
    }

    #[test]
    fn a_stored_answer_reads_back_as_the_first_receipt() {
        let receipt = UsageReceipt {
            duplicate: false,
            credits: Amount::from_int(5),
            member_used: "12.5".parse().unwrap(),
            member_remaining: "987.5".parse().unwrap(),
        };
        let record = KeyRecord {
            fingerprint: record(0).fingerprint,
            answer: KeyAnswer::Usage(receipt.clone()),
        };
        let stored = record.stored_answer().unwrap();
        assert_eq!(stored.text(), "12.5 987.5");
        let read = StoredAnswer::parse(&stored.text()).unwrap();
        assert_eq!(read.receipt(Amount::from_int(5)), receipt);
        assert_eq!(StoredAnswer::parse("12.5"), None);
        // A sum the writer did not normalize is stored in canonical form.
        let unnormalized = StoredAnswer {
            used: Amount::from_decimal("12.5".parse().unwrap()) + Amount::from_decimal("0.500".parse().unwrap()),
            remaining: Amount::from_int(1),
        };
        assert_eq!(unnormalized.text(), "13 1");
    }
}
