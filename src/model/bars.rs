use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::DateRange;

/// A non-OHLCV field a plugin attached to a bar (`adjclose`, `currency`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExtraValue {
    Number(f64),
    Text(String),
}

/// One daily bar, dated by the exchange's local trading date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    #[serde(serialize_with = "date_as_ymd")]
    pub date: NaiveDate,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "volume_as_integer"
    )]
    pub volume: Option<f64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, ExtraValue>,
}

/// Every stored bar writes its date: the fast writer, not chrono's formatter.
fn date_as_ymd<S: serde::Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    match super::ymd(*d) {
        // ymd writes ASCII digits and dashes only.
        Some(bytes) => s.serialize_str(std::str::from_utf8(&bytes).unwrap_or_default()),
        None => d.serialize(s),
    }
}

/// Volumes are share counts: write `82488700`, not `82488700.0`, when whole.
fn volume_as_integer<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) => match whole_volume(*x) {
            Some(n) => s.serialize_u64(n),
            None => s.serialize_f64(*x),
        },
        None => s.serialize_none(),
    }
}

fn whole_volume(x: f64) -> Option<u64> {
    super::whole_number(x).and_then(|i| u64::try_from(i).ok())
}

impl Bar {
    /// Appends this bar as JSON, byte for byte what its `Serialize` impl
    /// writes through serde_json (string escaping of every key and date was ~4% of a whole refresh's instructions under callgrind).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"date\":");
        match super::ymd(self.date) {
            Some(bytes) => {
                out.push(b'"');
                out.extend_from_slice(&bytes);
                out.push(b'"');
            }
            None => json_into(out, &self.date),
        }
        for (key, v) in [
            (&b",\"open\":"[..], self.open),
            (b",\"high\":", self.high),
            (b",\"low\":", self.low),
            (b",\"close\":", self.close),
        ] {
            out.extend_from_slice(key);
            json_into(out, &v);
        }
        if let Some(v) = self.volume {
            out.extend_from_slice(b",\"volume\":");
            match whole_volume(v) {
                Some(n) => json_into(out, &n),
                None => json_into(out, &v),
            }
        }
        for (k, v) in &self.extra {
            out.push(b',');
            json_into(out, k);
            out.push(b':');
            json_into(out, v);
        }
        out.push(b'}');
    }
}

/// One value as serde_json writes it. Writing into a `Vec` cannot fail, and
/// these values (numbers, strings, dates) always serialise.
pub fn json_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(&mut *out, v);
}

/// The output contract for a list of bars (docs/PLUGINS.md, "What `fetch`
/// must return").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BarsError {
    #[error("bars[{index}].{field}: {message}")]
    Field {
        index: usize,
        field: String,
        message: String,
    },
}

/// Bars sorted by date inside the requested range: the unit that is cached.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bars(Vec<Bar>);

impl Bars {
    /// Takes the bars out (they were checked when this was built).
    pub fn into_vec(self) -> Vec<Bar> {
        self.0
    }

    /// Checks what a cache or plugin handed us against the output contract.
    /// Indexes in messages are 1-based, as a Lua author counts them.
    pub fn validated(bars: Vec<Bar>, range: &DateRange) -> Result<Self, BarsError> {
        Self::check(&bars, range)?;
        Ok(Self(bars))
    }

    pub fn check(bars: &[Bar], range: &DateRange) -> Result<(), BarsError> {
        let mut prev: Option<NaiveDate> = None;
        for (i, bar) in bars.iter().enumerate() {
            let index = i + 1;
            let err = |field: &str, message: String| BarsError::Field {
                index,
                field: field.to_owned(),
                message,
            };
            for (field, v) in [
                ("open", bar.open),
                ("high", bar.high),
                ("low", bar.low),
                ("close", bar.close),
            ] {
                if !v.is_finite() {
                    return Err(err(field, format!("must be a finite number, got {v}")));
                }
            }
            if let Some(v) = bar.volume
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(err("volume", format!("must be a finite number >= 0, got {v}")));
            }
            for (k, v) in &bar.extra {
                if let ExtraValue::Number(x) = v
                    && !x.is_finite()
                {
                    return Err(err(k, format!("must be a finite number, got {x}")));
                }
            }
            if !range.contains(bar.date) {
                return Err(err(
                    "date",
                    format!("{} is outside the requested range {range}", bar.date),
                ));
            }
            if let Some(p) = prev
                && bar.date <= p
            {
                return Err(err(
                    "date",
                    format!(
                        "{} does not come after the previous bar's {p}; bars must be sorted by date without duplicates",
                        bar.date
                    ),
                ));
            }
            prev = Some(bar.date);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(date: &str) -> Bar {
        Bar {
            date: NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap(),
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: Some(100.0),
            extra: BTreeMap::new(),
        }
    }

    fn range() -> DateRange {
        DateRange::from_request(
            Some("2024-01-01"),
            Some("2024-01-31"),
            NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn accepts_sorted_bars_in_range() {
        let b = Bars::validated(vec![bar("2024-01-02"), bar("2024-01-03")], &range()).unwrap();
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn names_the_bar_and_field_that_break_the_contract() {
        let mut nan = bar("2024-01-03");
        nan.high = f64::NAN;
        let err = Bars::validated(vec![bar("2024-01-02"), nan], &range()).unwrap_err();
        assert_eq!(err.to_string(), "bars[2].high: must be a finite number, got NaN");

        let err = Bars::validated(vec![bar("2024-01-03"), bar("2024-01-02")], &range()).unwrap_err();
        assert!(err.to_string().starts_with("bars[2].date"), "{err}");

        let err = Bars::validated(vec![bar("2024-02-01")], &range()).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");

        let mut neg = bar("2024-01-02");
        neg.volume = Some(-1.0);
        assert!(Bars::validated(vec![neg], &range()).is_err());
    }

    #[test]
    fn volume_serialises_as_an_integer() {
        let json = serde_json::to_string(&bar("2024-01-02")).unwrap();
        assert!(json.contains("\"volume\":100"), "{json}");
        assert!(!json.contains("100.0"), "{json}");
    }
}
