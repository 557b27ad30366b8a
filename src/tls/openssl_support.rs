//! The OpenSSL release series upstream still fixes: a table of each series' last day of support,
//! the calendar code to compare it with today, and the clause the start-up line prints about the
//! linked libssl.
//!
//! It needs no network and reads no file: the answer comes from the table and the system clock.
//! It never builds a context and never refuses to start; an unsupported series only warns.

/// A calendar date, for the OpenSSL support table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Date {
    const fn new(year: i32, month: u8, day: u8) -> Date {
        Date { year, month, day }
    }

    /// Today in UTC, from the system clock.
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Date::from_days(i64::try_from(secs / 86_400).unwrap_or(i64::MAX))
    }

    /// The date `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
    fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // Every value is in range by construction: month 1-12, day 1-31, and a year from a u64 of
        // seconds fits an i32 for millions of years.
        Date::new(
            i32::try_from(year).unwrap_or(i32::MAX),
            u8::try_from(month).unwrap_or(12),
            u8::try_from(day).unwrap_or(31),
        )
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// An OpenSSL release series: `3.5`; before 3.0 the fix number was part of it (`1.1.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub major: u8,
    pub minor: u8,
    /// Always 0 from 3.0 on.
    pub fix: u8,
}

impl Series {
    /// The series of an `OPENSSL_VERSION_NUMBER` (`0xMNNFFPPS`: major, minor, fix, patch, status).
    pub fn of(version_number: i64) -> Series {
        let byte = |shift: u32| u8::try_from((version_number >> shift) & 0xff).unwrap_or(0);
        Series {
            major: u8::try_from((version_number >> 28) & 0xf).unwrap_or(0),
            minor: byte(20),
            fix: byte(12),
        }
    }
}

impl std::fmt::Display for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.major < 3 {
            write!(f, "{}.{}.{}", self.major, self.minor, self.fix)
        } else {
            write!(f, "{}.{}", self.major, self.minor)
        }
    }
}

/// Whether upstream (the OpenSSL project) still fixes a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Fixed upstream until `until` (inclusive); `lts` for a long-term-support series.
    Supported { until: Date, lts: bool },
    /// Upstream support ended after `ended`: fixes now come only from a distribution that
    /// backports them. `replacement` is the newest long-term-support series still supported.
    Ended {
        ended: Date,
        lts: bool,
        replacement: Option<(Series, Date)>,
    },
    /// Newer than every series in [`OPENSSL_SUPPORT`]: nothing known, nothing to warn about.
    Newer,
    /// Older than 3.0: every such series ended by 2023-09-11 (1.1.1, the last of them).
    Older,
}

impl Support {
    /// Warn for a series upstream no longer fixes, info otherwise.
    pub fn level(&self) -> log::Level {
        match self {
            Support::Supported { .. } | Support::Newer => log::Level::Info,
            Support::Ended { .. } | Support::Older => log::Level::Warn,
        }
    }

    /// One clause for the start-up line, naming `series`.
    pub fn describe(&self, series: Series) -> String {
        let lts = |lts: bool| if lts { " (LTS)" } else { "" };
        match *self {
            Support::Supported { until, lts: l } => {
                format!(
                    "OpenSSL {series}{} is supported upstream until {until}",
                    lts(l)
                )
            }
            Support::Ended {
                ended,
                lts: l,
                replacement,
            } => {
                let move_to = replacement
                    .map(|(s, until)| format!("; {s} (LTS) is supported until {until}"))
                    .unwrap_or_default();
                format!(
                    "upstream support for OpenSSL {series}{} ended on {ended}; security fixes now come only from the distribution's backports, if it makes them{move_to}",
                    lts(l)
                )
            }
            Support::Newer => format!(
                "OpenSSL {series} is newer than this build's support table (written {OPENSSL_SUPPORT_CHECKED})"
            ),
            Support::Older => format!(
                "OpenSSL {series} is older than 3.0 and out of upstream support since 2023-09-11 at the latest; update libssl"
            ),
        }
    }
}

/// When [`OPENSSL_SUPPORT`] was last checked against upstream.
pub const OPENSSL_SUPPORT_CHECKED: Date = Date::new(2026, 11, 30);

/// Upstream's last day of support for each series from 3.0 on, oldest first, with whether it is a
/// long-term-support series. From the OpenSSL project's release strategy and roadmap
/// (openssl-library.org/policies/releasestrat, /roadmap, /source), as quoted on 2026-11-30:
/// 3.0 LTS 2026-09-07 (its last year security fixes only), 3.1 2025-03-14, 3.2 2025-11-23,
/// 3.3 2026-04-09, 3.4 2026-10-22, 3.5 LTS 2030-04-08, 3.6 2026-11-01 (the roadmap's date; one
/// third-party page says 2026-11-26, which is also past), 4.0 2027-05-14. A series newer than the
/// last row is reported as such, never as unsupported, so the table may lag without lying.
pub const OPENSSL_SUPPORT: &[(u8, u8, Date, bool)] = &[
    (3, 0, Date::new(2026, 9, 7), true),
    (3, 1, Date::new(2025, 3, 14), false),
    (3, 2, Date::new(2025, 11, 23), false),
    (3, 3, Date::new(2026, 4, 9), false),
    (3, 4, Date::new(2026, 10, 22), false),
    (3, 5, Date::new(2030, 4, 8), true),
    (3, 6, Date::new(2026, 11, 1), false),
    (4, 0, Date::new(2027, 5, 14), false),
];

/// Which series an `OPENSSL_VERSION_NUMBER` belongs to and whether upstream supports it today.
/// Needs no network: the answer comes from [`OPENSSL_SUPPORT`] and the system clock.
pub fn openssl_support(version_number: i64) -> (Series, Support) {
    support_on(version_number, Date::today())
}

fn support_on(version_number: i64, today: Date) -> (Series, Support) {
    let series = Series::of(version_number);
    if series.major < 3 {
        return (series, Support::Older);
    }
    let row = OPENSSL_SUPPORT
        .iter()
        .find(|(major, minor, ..)| (*major, *minor) == (series.major, series.minor));
    let support = match row {
        Some(&(.., until, lts)) if today <= until => Support::Supported { until, lts },
        Some(&(.., ended, lts)) => {
            let replacement = OPENSSL_SUPPORT
                .iter()
                .filter(|(.., until, lts)| *lts && today <= *until)
                .max_by_key(|(.., until, _)| *until)
                .map(|&(major, minor, until, _)| {
                    let s = Series {
                        major,
                        minor,
                        fix: 0,
                    };
                    (s, until)
                });
            Support::Ended {
                ended,
                lts,
                replacement,
            }
        }
        None => Support::Newer,
    };
    (series, support)
}

/// The libssl this process runs with: its version text, its series and whether upstream still
/// supports that series.
pub fn linked_openssl() -> (&'static str, Series, Support) {
    let (series, support) = openssl_support(openssl::version::number());
    (openssl::version::version(), series, support)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(Date::from_days(0), Date::new(1970, 1, 1));
        assert_eq!(Date::from_days(20_787), Date::new(2026, 11, 30));
        assert_eq!(Date::from_days(11_016), Date::new(2000, 2, 29));
        assert_eq!(Date::new(2026, 9, 7).to_string(), "2026-09-07");
    }

    #[test]
    fn series_of_version_numbers() {
        assert_eq!(Series::of(0x3000_0130).to_string(), "3.0"); // 3.0.19
        assert_eq!(Series::of(0x3050_0040).to_string(), "3.5"); // 3.5.4
        assert_eq!(Series::of(0x4000_0000).to_string(), "4.0");
        assert_eq!(Series::of(0x1010_117f).to_string(), "1.1.1"); // 1.1.1w
    }

    #[test]
    fn openssl_support_by_series_as_of_the_table() {
        let on = Date::new(2026, 11, 30);
        let at = |n: i64| support_on(n, on);
        let lts35 = Some((
            Series {
                major: 3,
                minor: 5,
                fix: 0,
            },
            Date::new(2030, 4, 8),
        ));
        assert_eq!(
            at(0x3000_0130).1,
            Support::Ended {
                ended: Date::new(2026, 9, 7),
                lts: true,
                replacement: lts35
            }
        );
        for (n, ended) in [
            (0x3010_0000, Date::new(2025, 3, 14)),
            (0x3020_0000, Date::new(2025, 11, 23)),
            (0x3030_0000, Date::new(2026, 4, 9)),
            (0x3040_0000, Date::new(2026, 10, 22)),
            (0x3060_0000, Date::new(2026, 11, 1)),
        ] {
            assert_eq!(
                at(n).1,
                Support::Ended {
                    ended,
                    lts: false,
                    replacement: lts35
                },
                "{n:x}"
            );
            assert_eq!(at(n).1.level(), log::Level::Warn);
        }
        let supported = at(0x3050_0040).1;
        assert_eq!(
            supported,
            Support::Supported {
                until: Date::new(2030, 4, 8),
                lts: true
            }
        );
        assert_eq!(supported.level(), log::Level::Info);
        assert_eq!(at(0x4000_0000).1.level(), log::Level::Info);
        assert_eq!(at(0x4010_0000).1, Support::Newer);
        assert_eq!(at(0x4010_0000).1.level(), log::Level::Info);
        assert_eq!(at(0x1010_117f).1, Support::Older);
        assert_eq!(at(0x1010_117f).1.level(), log::Level::Warn);

        // The last day is still supported; 3.0 before its end was.
        assert!(matches!(
            support_on(0x3000_0130, Date::new(2026, 9, 7)).1,
            Support::Supported { lts: true, .. }
        ));
        // After 3.5's end, with no LTS left in the table, nothing is suggested.
        assert!(matches!(
            support_on(0x3050_0000, Date::new(2030, 4, 9)).1,
            Support::Ended {
                replacement: None,
                ..
            }
        ));
    }

    #[test]
    fn openssl_support_reads_as_a_sentence() {
        let (series, support) = support_on(0x3000_0130, Date::new(2026, 11, 30));
        assert_eq!(
            support.describe(series),
            "upstream support for OpenSSL 3.0 (LTS) ended on 2026-09-07; security fixes now come only from the distribution's backports, if it makes them; 3.5 (LTS) is supported until 2030-04-08"
        );
        let (series, support) = support_on(0x3050_0040, Date::new(2026, 11, 30));
        assert_eq!(
            support.describe(series),
            "OpenSSL 3.5 (LTS) is supported upstream until 2030-04-08"
        );
    }
}
