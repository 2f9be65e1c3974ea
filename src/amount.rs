//! Exact credit amounts.
//!
//! Every amount is a [`rust_decimal::Decimal`] with at most
//! [`MAX_SCALE`] decimal places and at most [`MAX_INTEGER_DIGITS`] digits
//! before the point, so that sums over millions of members stay far inside
//! the decimal range. Amounts are parsed from text only: a JSON or YAML
//! float never becomes an amount.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most decimal places an amount may carry.
pub const MAX_SCALE: u32 = 9;
/// Most digits an amount may carry before the decimal point.
pub const MAX_INTEGER_DIGITS: usize = 18;

/// Why a piece of text is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal number such as 1500 or \"12.5\", got {0:?}")]
    NotANumber(String),
    #[error("must not be negative, got {0}")]
    Negative(String),
    #[error("must be greater than zero, got {0}")]
    NotPositive(String),
    #[error("has more than {MAX_SCALE} decimal places: {0}")]
    TooPrecise(String),
    #[error("is too large (at most {MAX_INTEGER_DIGITS} digits before the point): {0}")]
    TooLarge(String),
    #[error("must be written as an integer or a decimal string such as \"12.5\", not a float")]
    Float,
}

/// A credit (or dollar) amount: exact, at most 9 decimal places, possibly
/// negative only where a computed figure (a remaining balance) allows it.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(Decimal);

impl Amount {
    pub const ZERO: Amount = Amount(Decimal::ZERO);

    /// Wraps a decimal computed by the ledger (sums, differences).
    pub fn from_decimal(d: Decimal) -> Self {
        Amount(d.normalize())
    }

    pub fn from_int(i: i64) -> Self {
        Amount(Decimal::from(i))
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    /// Parses user input: digits, an optional minus sign and an optional
    /// fraction, nothing around them (the CRD's pattern says the same:
    /// `" 5"`, `"5 "` and `"+5"` are refused, as `validate` refuses them).
    /// Rejects exponents, NaN, infinities, more than 9 places and more
    /// than 18 integer digits.
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        let t = text;
        let digits = t.strip_prefix('-').unwrap_or(t);
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
            return Err(AmountError::NotANumber(text.to_string()));
        }
        if frac_part.is_some_and(|f| f.len() > MAX_SCALE as usize) {
            return Err(AmountError::TooPrecise(text.to_string()));
        }
        if int_part.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
            return Err(AmountError::TooLarge(text.to_string()));
        }
        let d = Decimal::from_str(t).map_err(|_| AmountError::NotANumber(text.to_string()))?;
        Ok(Amount(d.normalize()))
    }

    /// Parses an amount the ledger wrote itself (a journal entry, a
    /// snapshot): the same syntax as [`Amount::parse`], but any size the
    /// decimal holds, because running totals may pass the 18 digits an
    /// input is capped at.
    pub(crate) fn parse_record(text: &str) -> Result<Amount, AmountError> {
        let digits = text.strip_prefix('-').unwrap_or(text);
        let (int_part, frac_part) = digits.split_once('.').map_or((digits, None), |(i, f)| (i, Some(f)));
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
            return Err(AmountError::NotANumber(text.to_string()));
        }
        let d = Decimal::from_str_exact(text).map_err(|_| AmountError::TooLarge(text.to_string()))?;
        Ok(Amount(d.normalize()))
    }

    /// Parses an amount that must be zero or more.
    pub fn parse_non_negative(text: &str) -> Result<Amount, AmountError> {
        let a = Amount::parse(text)?;
        a.check_non_negative()
    }

    /// Parses an amount that must be more than zero.
    pub fn parse_positive(text: &str) -> Result<Amount, AmountError> {
        let a = Amount::parse(text)?;
        a.check_positive()
    }

    pub fn check_non_negative(self) -> Result<Amount, AmountError> {
        if self.is_negative() {
            Err(AmountError::Negative(self.to_string()))
        } else {
            Ok(self)
        }
    }

    pub fn check_positive(self) -> Result<Amount, AmountError> {
        if self.0 <= Decimal::ZERO {
            Err(AmountError::NotPositive(self.to_string()))
        } else {
            Ok(self)
        }
    }

    /// `self × factor`, rounded half-even to 9 places (the conversion from
    /// dollars to credits). `None` when the product leaves the range.
    pub fn convert(self, factor: Amount) -> Option<Amount> {
        let p = self.0.checked_mul(factor.0)?;
        let r = p.round_dp_with_strategy(MAX_SCALE, RoundingStrategy::MidpointNearestEven);
        Some(Amount(r.normalize()))
    }

    pub fn max(self, other: Amount) -> Amount {
        if self >= other {
            self
        } else {
            other
        }
    }

    pub fn min(self, other: Amount) -> Amount {
        if self <= other {
            self
        } else {
            other
        }
    }
}

impl Amount {
    /// `self + other`, held at the decimal's largest value instead of
    /// overflowing: for sums that have no ceiling of their own.
    pub fn saturating_add(self, other: Amount) -> Amount {
        match self.0.checked_add(other.0) {
            Some(d) => Amount(d),
            None if other.0.is_sign_negative() => Amount(Decimal::MIN),
            None => Amount(Decimal::MAX),
        }
    }
}

// Sums and differences are not normalized: their scale stays that of the
// most precise operand (at most 9 places), equality, order and hashing
// compare values, and every way out (`Display`, serialization) prints the
// canonical form. Normalizing each running total was a tenth of the
// writer's time per usage event.
impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, rhs: Amount) -> Amount {
        Amount(self.0 + rhs.0)
    }
}

impl std::ops::Sub for Amount {
    type Output = Amount;
    fn sub(self, rhs: Amount) -> Amount {
        Amount(self.0 - rhs.0)
    }
}

impl std::ops::AddAssign for Amount {
    fn add_assign(&mut self, rhs: Amount) {
        *self = *self + rhs;
    }
}

impl std::ops::SubAssign for Amount {
    fn sub_assign(&mut self, rhs: Amount) {
        *self = *self - rhs;
    }
}

impl std::iter::Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        iter.fold(Amount::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Amount {
    /// Canonical form: no trailing zeros, no exponent (`975`, `0.01`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.normalize())
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Amount::parse(s)
    }
}

thread_local! {
    static READING_RECORDS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a decode of the ledger's own journal entries or snapshots)
/// with amounts read at the decimal's full size instead of the input cap.
/// Decoding is synchronous, so a flag on this thread covers exactly the
/// values `f` reads.
pub fn reading_records<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            READING_RECORDS.set(self.0);
        }
    }
    let _restore = Restore(READING_RECORDS.replace(true));
    f()
}

/// Parses a deserialized amount as input, or as a record inside
/// [`reading_records`].
fn parse_deserialized(text: &str) -> Result<Amount, AmountError> {
    if READING_RECORDS.get() {
        Amount::parse_record(text)
    } else {
        Amount::parse(text)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The key serde_json uses to hand over a number's text when its
/// `arbitrary_precision` feature is on.
const JSON_NUMBER_TOKEN: &str = "$serde_json::private::Number";

struct AmountVisitor;

impl<'de> Visitor<'de> for AmountVisitor {
    type Value = Amount;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer or a decimal string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
        parse_deserialized(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
        parse_deserialized(&v.to_string()).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
        parse_deserialized(&v.to_string()).map_err(E::custom)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Amount, E> {
        parse_deserialized(&v.to_string()).map_err(E::custom)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Amount, E> {
        parse_deserialized(&v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Amount, E> {
        Err(E::custom(AmountError::Float))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Amount, A::Error> {
        // serde_json with `arbitrary_precision` presents a number as a
        // one-entry map holding its exact text.
        match map.next_key::<String>()? {
            Some(k) if k == JSON_NUMBER_TOKEN => {
                let text: String = map.next_value()?;
                parse_deserialized(&text).map_err(de::Error::custom)
            }
            _ => Err(de::Error::custom("expected an integer or a decimal string")),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        d.deserialize_any(AmountVisitor)
    }
}

impl schemars::JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// An integer or a decimal string, never negative, at most 18 digits
    /// before and 9 after the point, like a Kubernetes quantity: the
    /// pattern judges strings, `minimum` and one cheap CEL rule integers
    /// (a schema's `maximum` is a float, too coarse for 18 digits; a string
    /// with a point is the pattern's to judge).
    /// Fields that must be positive add their own rule.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "nullable": false,
            "pattern": AMOUNT_PATTERN,
            "minimum": 0,
            "x-kubernetes-validations": [{
                "rule": "string(self).size() <= 18 || string(self).contains('.')",
                "message": "must have at most 18 digits before the point"
            }]
        })
    }
}

/// What an amount written as a string must look like.
pub const AMOUNT_PATTERN: &str = "^[0-9]{1,18}([.][0-9]{1,9})?$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_integers_and_decimal_strings_exactly() {
        assert_eq!(Amount::parse("1500").unwrap().to_string(), "1500");
        assert_eq!(Amount::parse("12.50").unwrap().to_string(), "12.5");
        assert_eq!(Amount::parse("0.000000001").unwrap().to_string(), "0.000000001");
        assert_eq!(Amount::parse("-3").unwrap().to_string(), "-3");
    }

    #[test]
    fn parse_rejects_what_is_not_an_exact_amount() {
        for bad in ["", "abc", "NaN", "inf", "1e5", "1.", ".5", "1,5", "0x10"] {
            assert!(matches!(Amount::parse(bad), Err(AmountError::NotANumber(_))), "{bad}");
        }
        assert!(matches!(Amount::parse("0.0000000001"), Err(AmountError::TooPrecise(_))));
        assert!(matches!(
            Amount::parse("1234567890123456789"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            Amount::parse_non_negative("-1"),
            Err(AmountError::Negative(_))
        ));
        assert!(matches!(Amount::parse_positive("0"), Err(AmountError::NotPositive(_))));
    }

    #[test]
    fn json_numbers_are_read_from_their_text_not_through_a_float() {
        let a: Amount = serde_json::from_str("0.1").unwrap();
        assert_eq!(a.decimal(), Decimal::from_str("0.1").unwrap());
        let b: Amount = serde_json::from_str("\"12.345678901\"").unwrap();
        assert_eq!(b.to_string(), "12.345678901");
        assert!(serde_json::from_str::<Amount>("1e3").is_err());
        let c: Amount = serde_json::from_str("12345678901234567").unwrap();
        assert_eq!(c.to_string(), "12345678901234567");
    }

    #[test]
    fn yaml_floats_are_refused_with_a_hint() {
        let err = serde_yaml::from_str::<Amount>("12.5").unwrap_err().to_string();
        assert!(err.contains("not a float"), "{err}");
        let ok: Amount = serde_yaml::from_str("\"12.5\"").unwrap();
        assert_eq!(ok.to_string(), "12.5");
    }

    #[test]
    fn conversion_rounds_half_even_to_nine_places() {
        let cost = Amount::parse("0.0000000125").unwrap_err();
        assert!(matches!(cost, AmountError::TooPrecise(_)));
        let cost = Amount::parse("0.000000001").unwrap();
        // 0.000000001 × 2.5 = 0.0000000025 → 0.000000002 (half to even)
        assert_eq!(
            cost.convert(Amount::parse("2.5").unwrap()).unwrap().to_string(),
            "0.000000002"
        );
        // 0.000000001 × 3.5 = 0.0000000035 → 0.000000004
        assert_eq!(
            cost.convert(Amount::parse("3.5").unwrap()).unwrap().to_string(),
            "0.000000004"
        );
        assert_eq!(
            Amount::parse("1.25")
                .unwrap()
                .convert(Amount::from_int(100))
                .unwrap()
                .to_string(),
            "125"
        );
    }
}
