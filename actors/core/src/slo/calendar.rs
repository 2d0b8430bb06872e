//! Business calendars and the expected times of SLOs (issue 16, DESIGN.md §9), with no I/O.
//!
//! A calendar says which dates are business dates, in its IANA time zone. An expected time is
//! an [`Offset`] from a business date's local midnight that may pass 24 h ("by 03:00 the next
//! day" is 27 h): it is wall-clock time, so a deadline is "03:00 local" whatever daylight saving
//! did in between. A wall-clock time that does not exist (02:30 on a spring-forward day) is
//! moved forward by the gap (03:30 local, the same instant as 02:30 of the old offset); one
//! that exists twice (01:30 on a fall-back day) is its first occurrence — the earlier, stricter
//! deadline.

use std::collections::BTreeSet;

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset as _, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

use crate::domain::Invalid;

/// Which dates are business dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarKind {
    /// Monday to Friday, minus holidays.
    Standard,
    /// Every date.
    EveryDay,
    /// Every date, minus holidays.
    WeekendsIncluded,
    /// Monday to Friday, holidays included.
    HolidaysIncluded,
}

impl CalendarKind {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        Ok(match text {
            "standard" => Self::Standard,
            "every_day" => Self::EveryDay,
            "weekends_included" => Self::WeekendsIncluded,
            "holidays_included" => Self::HolidaysIncluded,
            _ => {
                return Err(Invalid(
                    "must be standard, every_day, weekends_included or holidays_included".into(),
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::EveryDay => "every_day",
            Self::WeekendsIncluded => "weekends_included",
            Self::HolidaysIncluded => "holidays_included",
        }
    }
}

/// A business calendar in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    pub kind: CalendarKind,
    tz: Tz,
    holidays: BTreeSet<NaiveDate>,
}

impl Calendar {
    pub fn new(
        kind: CalendarKind,
        time_zone: &str,
        holidays: impl IntoIterator<Item = NaiveDate>,
    ) -> Result<Self, Invalid> {
        let tz: Tz = time_zone
            .parse()
            .map_err(|_| Invalid(format!("{time_zone:?} is not an IANA time zone")))?;
        Ok(Self {
            kind,
            tz,
            holidays: holidays.into_iter().collect(),
        })
    }

    pub fn time_zone(&self) -> &'static str {
        self.tz.name()
    }

    /// Whether `date` is a business date.
    pub fn is_business_day(&self, date: NaiveDate) -> bool {
        let weekday = !matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
        let holiday = self.holidays.contains(&date);
        match self.kind {
            CalendarKind::Standard => weekday && !holiday,
            CalendarKind::EveryDay => true,
            CalendarKind::WeekendsIncluded => !holiday,
            CalendarKind::HolidaysIncluded => weekday,
        }
    }

    /// The first business date after `date` (within ten years; `None` for a calendar with none).
    pub fn next_business_day(&self, date: NaiveDate) -> Option<NaiveDate> {
        date.iter_days()
            .skip(1)
            .take(3660)
            .find(|d| self.is_business_day(*d))
    }

    /// The business dates in `[from, to]`, in order.
    pub fn business_dates(&self, from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
        from.iter_days()
            .take_while(|d| *d <= to)
            .filter(|d| self.is_business_day(*d))
            .collect()
    }

    /// The local date at instant `t`.
    pub fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The wall-clock minutes from `date`'s local midnight to instant `t` (the inverse of
    /// [`Calendar::at`]; negative before that midnight).
    pub fn minutes_after(&self, date: NaiveDate, t: DateTime<Utc>) -> i64 {
        let wall = t.with_timezone(&self.tz).naive_local();
        (wall - date.and_hms_opt(0, 0, 0).unwrap_or_default()).num_minutes()
    }

    /// The instant of wall-clock `offset` after `date`'s local midnight (see the module's
    /// rules for times that do not exist or exist twice).
    pub fn at(&self, date: NaiveDate, offset: Offset) -> DateTime<Utc> {
        let wall: NaiveDateTime = date.and_hms_opt(0, 0, 0).unwrap_or_default()
            + Duration::minutes(i64::from(offset.minutes()));
        match self.tz.from_local_datetime(&wall).earliest() {
            Some(t) => t.with_timezone(&Utc),
            None => {
                // In a gap: the same instant as the wall time under the offset before the gap.
                let before = self
                    .tz
                    .from_local_datetime(&(wall - Duration::hours(3)))
                    .earliest()
                    .map(|t| t.offset().fix());
                match before {
                    Some(fix) => (wall - fix).and_utc(),
                    None => wall.and_utc(),
                }
            }
        }
    }
}

/// A wall-clock time after a business date's local midnight, in minutes (0 to 7 days): may
/// exceed 24 h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Offset(u32);

impl Offset {
    pub const MAX_MINUTES: u32 = 7 * 24 * 60;
    /// The business date's local midnight.
    pub const MIDNIGHT: Self = Self(0);

    pub fn from_minutes(minutes: i64) -> Result<Self, Invalid> {
        u32::try_from(minutes)
            .ok()
            .filter(|m| *m <= Self::MAX_MINUTES)
            .map(Self)
            .ok_or_else(|| {
                Invalid("must be between 00:00 and 168:00 after the business date".into())
            })
    }

    /// `HH:MM`, hours possibly past 24 (`27:00` is 03:00 the next day).
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let invalid = || Invalid("must be HH:MM, e.g. 03:00 or 27:00 (03:00 the next day)".into());
        let (h, m) = text.split_once(':').ok_or_else(invalid)?;
        let ok = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
        if !ok(h) || m.len() != 2 || !ok(m) {
            return Err(invalid());
        }
        let (h, m): (i64, i64) = (
            h.parse().map_err(|_| invalid())?,
            m.parse().map_err(|_| invalid())?,
        );
        if m >= 60 {
            return Err(invalid());
        }
        Self::from_minutes(h * 60 + m)
    }

    pub fn minutes(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_four_kinds_of_calendar() {
        // 2026-12-25 is a Friday (a holiday), 2026-12-26 a Saturday.
        let holidays = [d("2026-12-25")];
        let cal = |k| Calendar::new(k, "Europe/Paris", holidays).unwrap();
        let days = [d("2026-12-24"), d("2026-12-25"), d("2026-12-26")];
        let business = |k| days.map(|x| cal(k).is_business_day(x));
        assert_eq!(business(CalendarKind::Standard), [true, false, false]);
        assert_eq!(business(CalendarKind::EveryDay), [true, true, true]);
        assert_eq!(
            business(CalendarKind::WeekendsIncluded),
            [true, false, true]
        );
        assert_eq!(
            business(CalendarKind::HolidaysIncluded),
            [true, true, false]
        );
        assert_eq!(
            cal(CalendarKind::Standard).next_business_day(d("2026-12-24")),
            Some(d("2026-12-28"))
        );
        assert!(CalendarKind::parse("weekly").is_err());
        assert_eq!(
            CalendarKind::parse("every_day").unwrap().as_str(),
            "every_day"
        );
        assert!(Calendar::new(CalendarKind::Standard, "Mars/Olympus", []).is_err());
    }

    #[test]
    fn offsets_past_midnight_are_wall_clock_times_of_the_next_day() {
        let paris = Calendar::new(CalendarKind::EveryDay, "Europe/Paris", []).unwrap();
        let three_next_day = Offset::parse("27:00").unwrap();
        assert_eq!(three_next_day.to_string(), "27:00");
        // Winter: UTC+1.
        assert_eq!(
            paris.at(d("2026-12-03"), three_next_day),
            t("2026-12-04T02:00:00Z")
        );
        // The night the clocks go back (25 Oct 2026, 03:00 CEST → 02:00 CET): still 03:00
        // local, which is 02:00 UTC.
        assert_eq!(
            paris.at(d("2026-10-24"), three_next_day),
            t("2026-10-25T02:00:00Z")
        );
        assert!(Offset::parse("24:60").is_err());
        assert!(Offset::parse("169:00").is_err());
        assert!(Offset::parse("3h").is_err());
        assert_eq!(Offset::parse("0:05").unwrap().minutes(), 5);
    }

    #[test]
    fn a_deadline_in_the_spring_forward_gap_is_moved_forward_by_the_gap() {
        let ny = Calendar::new(CalendarKind::EveryDay, "America/New_York", []).unwrap();
        // 8 March 2026: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        let at = ny.at(d("2026-03-08"), Offset::parse("02:30").unwrap());
        assert_eq!(
            at,
            t("2026-03-08T07:30:00Z"),
            "03:30 EDT, the instant 02:30 EST would be"
        );
        // Either side of the gap is plain.
        assert_eq!(
            ny.at(d("2026-03-08"), Offset::parse("01:59").unwrap()),
            t("2026-03-08T06:59:00Z")
        );
        assert_eq!(
            ny.at(d("2026-03-08"), Offset::parse("03:00").unwrap()),
            t("2026-03-08T07:00:00Z")
        );
        // 1 Nov 2026: 01:30 happens twice; the deadline is the first.
        assert_eq!(
            ny.at(d("2026-11-01"), Offset::parse("01:30").unwrap()),
            t("2026-11-01T05:30:00Z")
        );
    }

    #[test]
    fn local_dates_follow_the_calendar_time_zone() {
        let tokyo = Calendar::new(CalendarKind::Standard, "Asia/Tokyo", []).unwrap();
        assert_eq!(tokyo.local_date(t("2026-12-03T15:00:00Z")), d("2026-12-04"));
        assert_eq!(tokyo.time_zone(), "Asia/Tokyo");
    }
}
