//! The arithmetic and number formatting every benchmark table shares: medians, rounding to a
//! number of decimals, and numbers written as the report has always written them (the shortest
//! text that reads back as the same number: `2`, `1.5`, `0.33`), with `-` where there is none.
//!
//! Nothing here reads a file or knows a section; the report modules do.

use serde_json::Value;

/// The median of a list (the mean of the two middle values for an even count), None when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// `x` rounded half away from zero to `places` decimals.
pub fn round_to(x: f64, places: u32) -> f64 {
    let scale = 10f64.powi(places as i32);
    (x * scale).round() / scale
}

/// A number as the report writes it: the shortest text that reads back as the same value,
/// without a trailing `.0`.
pub fn num(x: f64) -> String {
    format!("{x}")
}

/// `x` rounded to `places` decimals, or `-` when there is no value.
pub fn r(x: Option<f64>, places: u32) -> String {
    x.map_or_else(|| "-".to_string(), |x| num(round_to(x, places)))
}

/// The whole part of `x`, or `-` when there is no value.
pub fn floor(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |x| num(x.floor()))
}

/// `a / b` when both are there and `b` is above zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The number at a JSON pointer (`/latency_us/p99`), None when absent or not a number.
pub fn f(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer)?.as_f64()
}

/// The text at a JSON pointer, or "" when absent or not a string.
pub fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The value at a JSON pointer as the report prints a scalar: strings bare, numbers as [`num`].
pub fn text(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.as_f64().map_or_else(|| n.to_string(), num),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "null".to_string(),
    }
}

/// One markdown table row from its cells: `| a | b | c |`.
pub fn row<S: AsRef<str>>(cells: &[S]) -> String {
    let cells: Vec<&str> = cells.iter().map(AsRef::as_ref).collect();
    format!("| {} |", cells.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![7.0]), Some(7.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![10.0, 20.0]), Some(15.0));
    }

    #[test]
    fn numbers_are_written_shortest_and_rounded_half_away() {
        assert_eq!(num(2.0), "2");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(r(Some(1.0 / 3.0), 2), "0.33");
        assert_eq!(r(Some(2.345), 1), "2.3");
        assert_eq!(r(Some(0.25), 1), "0.3");
        assert_eq!(r(Some(12.0), 1), "12");
        assert_eq!(r(None, 1), "-");
        assert_eq!(floor(Some(1234.99)), "1234");
        assert_eq!(floor(None), "-");
    }

    #[test]
    fn ratios_need_a_positive_divisor() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(3.0), None), None);
    }

    #[test]
    fn json_access_and_rows() {
        let v = json!({"a": {"b": 1.5}, "n": "x", "k": 3});
        assert_eq!(f(&v, "/a/b"), Some(1.5));
        assert_eq!(f(&v, "/n"), None);
        assert_eq!(s(&v, "/n"), "x");
        assert_eq!(text(&v, "/k"), "3");
        assert_eq!(text(&v, "/missing"), "null");
        assert_eq!(row(&["a", "", "c"]), "| a |  | c |");
    }
}
