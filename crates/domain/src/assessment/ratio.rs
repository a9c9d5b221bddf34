//! Exact arithmetic: the fraction every score is computed in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A fraction in lowest terms, denominator positive. Wide enough for any
/// instrument Tend accepts (at most 200 items and 10 subscales); stored as
/// the string "num/den".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub num: i128,
    pub den: i128,
}

fn gcd(a: i128, b: i128) -> i128 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl Ratio {
    pub fn new(num: i128, den: i128) -> Self {
        let sign = if den < 0 { -1 } else { 1 };
        let g = gcd(num, den);
        Self {
            num: sign * num / g,
            den: sign * den / g,
        }
    }

    pub fn int(n: i128) -> Self {
        Self { num: n, den: 1 }
    }

    pub fn div_int(self, n: i128) -> Self {
        Self::new(self.num, self.den * n)
    }

    pub fn mul_int(self, n: i128) -> Self {
        Self::new(self.num * n, self.den)
    }

    pub fn value(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl std::str::FromStr for Ratio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a fraction: {s}");
        let (num, den) = s.split_once('/').unwrap_or((s, "1"));
        let num: i128 = num.parse().map_err(|_| bad())?;
        let den: i128 = den.parse().map_err(|_| bad())?;
        if den == 0 {
            return Err(bad());
        }
        Ok(Self::new(num, den))
    }
}

impl Serialize for Ratio {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::ops::Add for Ratio {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self::new(self.num * o.den + o.num * self.den, self.den * o.den)
    }
}

impl std::ops::Sub for Ratio {
    type Output = Self;

    fn sub(self, o: Self) -> Self {
        Self::new(self.num * o.den - o.num * self.den, self.den * o.den)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}
