//! Cycle boundaries: the cadence grammar and the schedule that places
//! every instant in exactly one cycle.
//!
//! A [`Schedule`] is pure: it is given an anchor and a time zone and
//! answers where boundaries fall. The ledger records the anchor and the
//! current cycle; this module never reads a clock.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The shortest fixed cadence.
pub const MIN_CADENCE_SECONDS: i64 = 60;
/// The longest fixed cadence (about 100 years): keeps arithmetic in range.
pub const MAX_CADENCE_SECONDS: i64 = 100 * 366 * 86_400;
/// Longest IANA time zone name accepted.
pub const MAX_TIMEZONE_LEN: usize = 64;

/// Why a cadence or time zone is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CycleError {
    #[error("unknown cadence {0:?}: use CalendarMonth or a duration such as 15d, 1w, 1d, 12h, 30m")]
    BadCadence(String),
    #[error("cadence {0:?} is shorter than the minimum of 1m")]
    CadenceTooShort(String),
    #[error("cadence {0:?} is longer than the maximum of 100 years")]
    CadenceTooLong(String),
    #[error("unknown time zone {0:?}: use an IANA name such as UTC or Europe/Berlin")]
    BadTimezone(String),
}

/// How often a cycle resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cadence {
    /// Same day and time of every month in the account's time zone,
    /// clamped to the month's last day.
    CalendarMonth,
    /// A fixed elapsed duration, in seconds (daylight saving ignored).
    Every { seconds: i64 },
}

impl Cadence {
    /// Parses `CalendarMonth` or `<n><m|h|d|w>`. Equal cadences compare
    /// equal whatever their spelling (`1w` = `7d`).
    pub fn parse(text: &str) -> Result<Cadence, CycleError> {
        if text == "CalendarMonth" {
            return Ok(Cadence::CalendarMonth);
        }
        let bad = || CycleError::BadCadence(text.to_string());
        let unit = text.chars().last().ok_or_else(bad)?;
        let number = &text[..text.len() - unit.len_utf8()];
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || number.starts_with('0') {
            return Err(bad());
        }
        let per_unit: i64 = match unit {
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: i64 = number
            .parse()
            .map_err(|_| CycleError::CadenceTooLong(text.to_string()))?;
        let seconds = n
            .checked_mul(per_unit)
            .ok_or_else(|| CycleError::CadenceTooLong(text.to_string()))?;
        if seconds < MIN_CADENCE_SECONDS {
            return Err(CycleError::CadenceTooShort(text.to_string()));
        }
        if seconds > MAX_CADENCE_SECONDS {
            return Err(CycleError::CadenceTooLong(text.to_string()));
        }
        Ok(Cadence::Every { seconds })
    }
}

impl fmt::Display for Cadence {
    /// Canonical spelling: the largest whole unit (`7d` prints as `1w`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cadence::CalendarMonth => f.write_str("CalendarMonth"),
            Cadence::Every { seconds } => {
                for (unit, size) in [('w', 604_800), ('d', 86_400), ('h', 3_600)] {
                    if seconds % size == 0 {
                        return write!(f, "{}{}", seconds / size, unit);
                    }
                }
                write!(f, "{}m", seconds / 60)
            }
        }
    }
}

impl FromStr for Cadence {
    type Err = CycleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cadence::parse(s)
    }
}

impl Serialize for Cadence {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cadence {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cadence::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Looks up an IANA time zone by name.
pub fn time_zone(name: &str) -> Result<TimeZone, CycleError> {
    if name.is_empty() || name.len() > MAX_TIMEZONE_LEN {
        return Err(CycleError::BadTimezone(name.to_string()));
    }
    TimeZone::get(name).map_err(|_| CycleError::BadTimezone(name.to_string()))
}

/// One cycle: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleWindow {
    pub number: u64,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Where the boundaries of an account fall.
#[derive(Debug, Clone)]
pub struct Schedule {
    cadence: Cadence,
    /// The instant the current anchoring began.
    anchor: Timestamp,
    /// The anchor's wall-clock time; calendar boundaries repeat it in
    /// whatever time zone the account has now.
    anchor_wall: DateTime,
    tz: TimeZone,
}

impl Schedule {
    pub fn new(cadence: Cadence, anchor: Timestamp, anchor_wall: DateTime, tz: TimeZone) -> Self {
        Schedule {
            cadence,
            anchor,
            anchor_wall,
            tz,
        }
    }

    /// The anchor of an account first seen at `now`: the 1st of the month
    /// at 00:00 in `tz` for `CalendarMonth`, `now` for a fixed duration.
    pub fn first_anchor(cadence: Cadence, tz: &TimeZone, now: Timestamp) -> (Timestamp, DateTime) {
        match cadence {
            Cadence::CalendarMonth => {
                let local = tz.to_datetime(now);
                let wall = local.date().first_of_month().to_datetime(jiff::civil::Time::midnight());
                (resolve(wall, tz).unwrap_or(now).min(now), wall)
            }
            Cadence::Every { .. } => (now, tz.to_datetime(now)),
        }
    }

    /// The anchor of a manual reset or a cadence change at `now`.
    pub fn anchor_now(tz: &TimeZone, now: Timestamp) -> (Timestamp, DateTime) {
        (now, tz.to_datetime(now))
    }

    pub fn cadence(&self) -> Cadence {
        self.cadence
    }

    /// The `k`-th boundary after the anchor (`k = 0` is the anchor itself
    /// for fixed durations). `None` when it leaves the representable range.
    pub fn boundary(&self, k: i64) -> Option<Timestamp> {
        match self.cadence {
            Cadence::Every { seconds } => {
                let offset = SignedDuration::from_secs(seconds.checked_mul(k)?);
                self.anchor.checked_add(offset).ok()
            }
            Cadence::CalendarMonth => {
                let aw = self.anchor_wall;
                let month_index = i64::from(aw.year()) * 12 + i64::from(aw.month()) - 1 + k;
                let year = i16::try_from(month_index.div_euclid(12)).ok()?;
                let month = i8::try_from(month_index.rem_euclid(12) + 1).ok()?;
                let first = Date::new(year, month, 1).ok()?;
                let day = aw.day().min(first.days_in_month());
                let date = Date::new(year, month, day).ok()?;
                resolve(date.to_datetime(aw.time()), &self.tz)
            }
        }
    }

    /// The index `k` of the last boundary at or before `t`.
    pub fn index_at(&self, t: Timestamp) -> i64 {
        let mut k = match self.cadence {
            Cadence::Every { seconds } => {
                let elapsed = t.as_second() - self.anchor.as_second();
                elapsed.div_euclid(seconds)
            }
            Cadence::CalendarMonth => {
                let local = self.tz.to_datetime(t);
                let aw = self.anchor_wall;
                (i64::from(local.year()) - i64::from(aw.year())) * 12 + i64::from(local.month()) - i64::from(aw.month())
            }
        };
        // The estimate is off by at most one either way (sub-second
        // anchors, clamped days, offsets); settle it exactly.
        while self.boundary(k).is_some_and(|b| b > t) {
            k -= 1;
        }
        while self.boundary(k + 1).is_some_and(|b| b <= t) {
            k += 1;
        }
        k
    }

    /// The latest boundary at or before `t`, and the one after it.
    pub fn window_at(&self, t: Timestamp) -> (Timestamp, Timestamp) {
        let k = self.index_at(t);
        let start = self.boundary(k).unwrap_or(t);
        let end = self.boundary(k + 1).unwrap_or(Timestamp::MAX);
        (start, end)
    }

    /// The first boundary strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Timestamp {
        self.window_at(t).1
    }
}

/// The instant a wall-clock time names in `tz`: a time skipped by a
/// daylight-saving gap maps to the first instant after the gap, a repeated
/// one to the earlier instant.
fn resolve(wall: DateTime, tz: &TimeZone) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(wall).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(wall).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(wall).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset the wall time lands before the
            // transition; the transition itself is the first instant after.
            let before_gap = after.to_timestamp(wall).ok()?;
            tz.following(before_gap).next().map(|tr| tr.timestamp())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn month_schedule(anchor_wall: &str, tz: &str) -> Schedule {
        let tz = time_zone(tz).unwrap();
        let wall: DateTime = anchor_wall.parse().unwrap();
        let anchor = resolve(wall, &tz).unwrap();
        Schedule::new(Cadence::CalendarMonth, anchor, wall, tz)
    }

    #[test]
    fn cadence_grammar_normalizes_and_refuses_nonsense() {
        assert_eq!(Cadence::parse("1w").unwrap(), Cadence::parse("7d").unwrap());
        assert_eq!(Cadence::parse("7d").unwrap().to_string(), "1w");
        assert_eq!(Cadence::parse("90m").unwrap().to_string(), "90m");
        assert_eq!(Cadence::parse("15d").unwrap(), Cadence::Every { seconds: 15 * 86_400 });
        for bad in [
            "",
            "d",
            "0d",
            "01d",
            "-1d",
            "1s",
            "1y",
            "1.5d",
            "calendarmonth",
            "1 d",
            "99999999999999999999w",
        ] {
            assert!(Cadence::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(Cadence::parse("0m"), Err(CycleError::BadCadence(_))));
        assert!(matches!(Cadence::parse("1000000w"), Err(CycleError::CadenceTooLong(_))));
    }

    #[test]
    fn calendar_month_clamps_day_31_to_short_months_without_drift() {
        let s = month_schedule("2025-01-31T00:00", "UTC");
        assert_eq!(s.boundary(0).unwrap(), ts("2025-01-31T00:00Z"));
        assert_eq!(s.boundary(1).unwrap(), ts("2025-02-28T00:00Z"));
        assert_eq!(s.boundary(2).unwrap(), ts("2025-03-31T00:00Z"));
        assert_eq!(s.boundary(3).unwrap(), ts("2025-04-30T00:00Z"));
        // 2028 is a leap year: 31 Jan → 29 Feb.
        let leap = month_schedule("2028-01-31T00:00", "UTC");
        assert_eq!(leap.boundary(1).unwrap(), ts("2028-02-29T00:00Z"));
        assert_eq!(leap.boundary(2).unwrap(), ts("2028-03-31T00:00Z"));
    }

    #[test]
    fn calendar_month_follows_the_account_time_zone() {
        let s = month_schedule("2026-01-01T00:00", "Europe/Berlin");
        // Winter: UTC+1; summer: UTC+2.
        assert_eq!(s.boundary(1).unwrap(), ts("2026-01-31T23:00Z"));
        assert_eq!(s.boundary(6).unwrap(), ts("2026-06-30T22:00Z"));
    }

    #[test]
    fn a_wall_time_skipped_by_dst_maps_to_the_end_of_the_gap() {
        // New York skips 02:00–03:00 on 8 March 2026; a schedule anchored
        // at 02:30 on the 8th hits the gap that month.
        let s = month_schedule("2026-02-08T02:30", "America/New_York");
        assert_eq!(s.boundary(1).unwrap(), ts("2026-03-08T07:00Z")); // 03:00 EDT
                                                                     // A repeated wall time (1 Nov 2026 01:30) takes the earlier instant.
        let f = month_schedule("2026-10-01T01:30", "America/New_York");
        assert_eq!(f.boundary(1).unwrap(), ts("2026-11-01T05:30Z")); // 01:30 EDT
    }

    #[test]
    fn fixed_durations_ignore_dst_and_jump_over_missed_boundaries() {
        let tz = time_zone("America/New_York").unwrap();
        let anchor = ts("2026-03-07T12:00Z");
        let s = Schedule::new(Cadence::parse("1d").unwrap(), anchor, tz.to_datetime(anchor), tz);
        assert_eq!(s.boundary(1).unwrap(), ts("2026-03-08T12:00Z"));
        // Ten days and an hour later: the cycle that contains now.
        let (start, end) = s.window_at(ts("2026-03-17T13:00Z"));
        assert_eq!(start, ts("2026-03-17T12:00Z"));
        assert_eq!(end, ts("2026-03-18T12:00Z"));
        assert_eq!(s.index_at(ts("2026-03-17T13:00Z")), 10);
    }

    #[test]
    fn the_first_calendar_anchor_is_the_first_of_the_month_at_midnight_local() {
        let tz = time_zone("Asia/Tokyo").unwrap();
        let (anchor, wall) = Schedule::first_anchor(Cadence::CalendarMonth, &tz, ts("2026-11-26T02:00Z"));
        assert_eq!(wall, "2026-11-01T00:00".parse::<DateTime>().unwrap());
        assert_eq!(anchor, ts("2026-10-31T15:00Z"));
    }

    #[test]
    fn unknown_or_overlong_time_zones_are_refused() {
        assert!(time_zone("Mars/Olympus").is_err());
        assert!(time_zone("").is_err());
        assert!(time_zone(&"A".repeat(65)).is_err());
        assert!(time_zone("Europe/Berlin").is_ok());
    }
}
