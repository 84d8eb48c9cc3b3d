//! Cron schedules as CronJobs spell them: five fields (minute, hour, day of month, month,
//! day of week) with `*`, `?`, lists, ranges, steps and month/day names, or a macro such as
//! `@hourly`. Like standard cron, when both day fields are restricted a day matching either
//! one matches.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether each day field was `*` (then only the other one restricts the day).
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + offset);
    }
    s.parse().map_err(|_| format!("{s:?} is not a number"))
}

fn field(spec: &str, min: u32, max: u32, names: &[&str], name_offset: u32, what: &str) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("{what}: step {s:?} is not a number"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("{what}: step must be at least 1"));
        }
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, name_offset).map_err(|e| format!("{what}: {e}"))?, value(b, names, name_offset).map_err(|e| format!("{what}: {e}"))?)
        } else {
            let v = value(range, names, name_offset).map_err(|e| format!("{what}: {e}"))?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{what}: {part:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        let expanded = match s.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            m if m.starts_with('@') => return Err(format!("unrecognized descriptor {s:?}")),
            _ => s.to_string(),
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {s:?}", f.len()));
        }
        let mut weekdays = field(f[4], 0, 7, &DAYS, 0, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Schedule {
            minutes: field(f[0], 0, 59, &[], 0, "minute")?,
            hours: field(f[1], 0, 23, &[], 0, "hour")?,
            days: field(f[2], 1, 31, &[], 0, "day of month")?,
            months: field(f[3], 1, 12, &MONTHS, 1, "month")?,
            weekdays,
            any_day: f[2] == "*" || f[2] == "?",
            any_weekday: f[4] == "*" || f[4] == "?",
        })
    }

    fn day_matches(&self, d: NaiveDate) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().num_days_from_sunday()) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first scheduled minute strictly after `t` (local wall time), within five years.
    pub fn next_after(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = t.with_second(0)?.with_nanosecond(0)? + chrono::Duration::minutes(1);
        let mut day = start.date();
        for _ in 0..(366 * 5) {
            if self.day_matches(day) {
                let first = if day == start.date() { start.time() } else { NaiveTime::MIN };
                for h in first.hour()..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let m0 = if h == first.hour() { first.minute() } else { 0 };
                    if let Some(m) = (m0..60).find(|m| self.minutes & (1 << m) != 0) {
                        return day.and_hms_opt(h, m, 0);
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn fields_ranges_steps_and_names() {
        let s = Schedule::parse("*/15 9-17 * JAN-mar mon-fri").unwrap();
        assert_eq!(s.next_after(at("2026-01-02 08:59")), Some(at("2026-01-02 09:00")));
        assert_eq!(s.next_after(at("2026-01-02 09:00")), Some(at("2026-01-02 09:15")));
        // Friday 17:45 -> Monday 09:00.
        assert_eq!(s.next_after(at("2026-01-02 17:45")), Some(at("2026-01-05 09:00")));
        assert_eq!(s.next_after(at("2026-03-31 17:50")), Some(at("2027-01-01 09:00")));
    }

    #[test]
    fn macros_and_every_minute() {
        assert_eq!(Schedule::parse("@hourly").unwrap().next_after(at("2026-05-01 10:30")), Some(at("2026-05-01 11:00")));
        assert_eq!(Schedule::parse("@daily").unwrap(), Schedule::parse("0 0 * * *").unwrap());
        assert_eq!(Schedule::parse("*/1 * * * *").unwrap().next_after(at("2026-05-01 10:30")), Some(at("2026-05-01 10:31")));
        assert_eq!(Schedule::parse("@yearly").unwrap().next_after(at("2026-05-01 10:30")), Some(at("2027-01-01 00:00")));
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th, or any Friday.
        let s = Schedule::parse("0 0 13 * 5").unwrap();
        assert_eq!(s.next_after(at("2026-11-01 00:00")), Some(at("2026-11-06 00:00")));
        assert_eq!(s.next_after(at("2026-11-10 00:00")), Some(at("2026-11-13 00:00")));
        // Sunday as 7.
        assert_eq!(Schedule::parse("0 0 * * 7").unwrap(), Schedule::parse("0 0 * * 0").unwrap());
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Schedule::parse("* * * *").unwrap_err().contains("5 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().contains("minute"));
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("step"));
        assert!(Schedule::parse("@fortnightly").unwrap_err().contains("descriptor"));
        assert!(Schedule::parse("0 0 * FOO *").unwrap_err().contains("month"));
    }
}

/// A time zone read from the host's zone database (TZif files under /usr/share/zoneinfo):
/// its UTC offsets over time. Past the last listed transition the last offset holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// (transition instant, offset in seconds from then on), ascending.
    transitions: Vec<(i64, i32)>,
    initial: i32,
}

const ZONEINFO: &str = "/usr/share/zoneinfo";

impl Zone {
    /// Loads zone `name` (such as `Europe/Berlin`); the error says why it cannot be used.
    pub fn load(name: &str) -> Result<Zone, String> {
        let valid = !name.is_empty() && !name.starts_with('/') && !name.split('/').any(|p| p == ".." || p == ".") && name.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if !valid {
            return Err(format!("unknown time zone {name}"));
        }
        let bytes = std::fs::read(std::path::Path::new(ZONEINFO).join(name)).map_err(|_| format!("unknown time zone {name}"))?;
        Zone::parse(&bytes).ok_or_else(|| format!("time zone {name}: unreadable zone file"))
    }

    /// Parses TZif data, using the 64-bit block of version 2+ files.
    pub fn parse(b: &[u8]) -> Option<Zone> {
        let u32_at = |o: usize| -> Option<usize> { Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?) as usize) };
        let header = |o: usize| -> Option<[usize; 6]> {
            if b.get(o..o + 4)? != b"TZif" {
                return None;
            }
            Some([u32_at(o + 20)?, u32_at(o + 24)?, u32_at(o + 28)?, u32_at(o + 32)?, u32_at(o + 36)?, u32_at(o + 40)?])
        };
        let [isut, isstd, leap, time, types, chars] = header(0)?;
        let version = *b.get(4)?;
        let (base, tsize, [_, _, leap2, time2, types2, _]) = if version >= b'2' {
            let v1 = 44 + time * 5 + types * 6 + chars + leap * 8 + isstd + isut;
            (v1 + 44, 8, header(v1)?)
        } else {
            (44, 4, [isut, isstd, leap, time, types, chars])
        };
        let _ = leap2;
        let idx_at = base + time2 * tsize;
        let types_at = idx_at + time2;
        let ttinfo = |i: usize| -> Option<i32> { Some(i32::from_be_bytes(b.get(types_at + i * 6..types_at + i * 6 + 4)?.try_into().ok()?)) };
        let mut transitions = Vec::with_capacity(time2);
        for i in 0..time2 {
            let at = base + i * tsize;
            let t = if tsize == 8 { i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?) } else { i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?) as i64 };
            let ty = *b.get(idx_at + i)? as usize;
            if ty >= types2 {
                return None;
            }
            transitions.push((t, ttinfo(ty)?));
        }
        Some(Zone { transitions, initial: ttinfo(0)? })
    }

    /// The UTC offset in force at instant `t` (Unix seconds).
    pub fn offset_at(&self, t: i64) -> i32 {
        match self.transitions.partition_point(|(at, _)| *at <= t) {
            0 => self.initial,
            i => self.transitions[i - 1].1,
        }
    }

    /// Wall-clock time of instant `t`.
    pub fn wall(&self, t: i64) -> Option<NaiveDateTime> {
        chrono::DateTime::from_timestamp(t + self.offset_at(t) as i64, 0).map(|d| d.naive_utc())
    }

    /// The instant a wall-clock time names: the earlier one when clocks go back, `None` for a
    /// time skipped when they go forward.
    pub fn instant(&self, local: NaiveDateTime) -> Option<i64> {
        let l = local.and_utc().timestamp();
        let mut candidates: Vec<i64> = [self.offset_at(l - 86_400), self.offset_at(l), self.offset_at(l + 86_400)]
            .into_iter()
            .map(|o| l - o as i64)
            .filter(|t| (*t + self.offset_at(*t) as i64) == l)
            .collect();
        candidates.sort();
        candidates.first().copied()
    }
}

#[cfg(test)]
mod zone_tests {
    use super::*;

    #[test]
    fn host_zone_database_offsets_and_dst() {
        let Ok(berlin) = Zone::load("Europe/Berlin") else {
            panic!("the tzdata package provides /usr/share/zoneinfo (scripts/install-deps.sh installs it)");
        };
        // 2026-01-15 12:00 UTC is 13:00 in Berlin; 2026-07-15 12:00 UTC is 14:00.
        assert_eq!(berlin.offset_at(1_768_478_400), 3600);
        assert_eq!(berlin.offset_at(1_784_116_800), 7200);
        let at = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        assert_eq!(berlin.wall(1_768_478_400), Some(at("2026-01-15 13:00")));
        assert_eq!(berlin.instant(at("2026-01-15 13:00")), Some(1_768_478_400));
        // 2026-03-29 02:30 does not exist in Berlin (clocks jump from 02:00 to 03:00).
        assert_eq!(berlin.instant(at("2026-03-29 02:30")), None);
        assert!(Zone::load("../../etc/passwd").is_err());
        assert!(Zone::load("Mars/Olympus").unwrap_err().contains("unknown time zone"));
    }
}
