//! What a learned rule rests on, kept small: a long baseline holds one [`Evidence`] per
//! rule, and a large cluster has hundreds of thousands of rules.

use smallvec::SmallVec;

use crate::intern::Name;

const DAY_MS: i64 = 86_400_000;

/// Distinct client pods kept per rule; more are counted as "at least this many" (pod names
/// change with every rollout, so a long baseline would otherwise grow without bound).
pub const MAX_SOURCE_PODS: usize = 64;

/// What a rule rests on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Connections seen (each once per endpoint that judged it).
    pub connections: u64,
    /// Bytes both ways of the connections that closed.
    pub bytes: u64,
    /// Unix milliseconds of the first and last connection (0 = none yet).
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The UTC days connections were seen on.
    pub days: DaySet,
    /// Client pods seen opening these connections.
    pub source_pods: SourcePods,
}

impl Evidence {
    /// How sure the baseline is that this rule is part of normal behaviour, in [0, 1):
    ///
    /// `confidence = (1 - e^(-connections / 10)) * (0.5 + 0.5 * (d - 1) / 6)`, with `d` the
    /// days seen, counted from 1 to 7.
    ///
    /// The first factor grows with how often the connection happens (10 connections give
    /// 0.63, 30 give 0.95); the second with over how many days it was seen (a connection
    /// seen on one day only keeps half its weight; on seven days or more, all of it), so a
    /// one-off burst never reads as established behaviour.
    pub fn confidence(&self) -> f64 {
        let often = 1.0 - (-(self.connections as f64) / 10.0).exp();
        let days = f64::from(self.days.count().clamp(1, 7));
        often * (0.5 + 0.5 * (days - 1.0) / 6.0)
    }

    /// A connection opened at `time_ms` by `client` (when known).
    pub fn count_connection(&mut self, time_ms: i64, client: Option<Name>) {
        self.count_connections(1, time_ms, client);
    }

    /// `n` connections (an agent's aggregate), the last opened at `time_ms`.
    pub fn count_connections(&mut self, n: u64, time_ms: i64, client: Option<Name>) {
        self.connections += n;
        self.seen_at(time_ms);
        if let Some(pod) = client {
            self.source_pods.insert(pod);
        }
    }

    fn seen_at(&mut self, time_ms: i64) {
        if self.first_seen_ms == 0 || time_ms < self.first_seen_ms {
            self.first_seen_ms = time_ms;
        }
        self.last_seen_ms = self.last_seen_ms.max(time_ms);
        self.days.insert(day_of(time_ms));
    }

    pub fn merge(&mut self, other: &Evidence) {
        self.merge_renamed(other, |n| n);
    }

    /// Add `other`, whose pod names are numbered by another interner: `rename` gives them
    /// in this evidence's.
    pub fn merge_renamed(&mut self, other: &Evidence, rename: impl Fn(Name) -> Name) {
        self.connections += other.connections;
        self.bytes += other.bytes;
        if other.first_seen_ms != 0 {
            self.seen_at(other.first_seen_ms);
            self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        }
        self.days.merge(&other.days);
        for &pod in &other.source_pods.0 {
            self.source_pods.insert(rename(pod));
        }
    }
}

/// The UTC day (days since 1970-01-01) of a Unix time in milliseconds.
pub fn day_of(time_ms: i64) -> u32 {
    u32::try_from(time_ms.div_euclid(DAY_MS)).unwrap_or(0)
}

/// The days something was seen on, among the 64 days up to the newest one seen: twelve
/// bytes, however long the baseline (which keeps at most weeks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaySet {
    /// The newest day seen (days since 1970-01-01); meaningless while `bits` is 0.
    newest: u32,
    /// Bit `i`: seen on day `newest - i`.
    bits: u64,
}

impl DaySet {
    pub const WINDOW: u32 = 64;

    pub fn insert(&mut self, day: u32) {
        if self.bits == 0 || day > self.newest {
            let shift = if self.bits == 0 {
                64
            } else {
                day - self.newest
            };
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.newest = day;
        }
        let age = self.newest - day;
        if age < Self::WINDOW {
            self.bits |= 1 << age;
        }
    }

    pub fn merge(&mut self, other: &DaySet) {
        for day in other.iter() {
            self.insert(day);
        }
    }

    pub fn count(&self) -> u32 {
        self.bits.count_ones()
    }

    /// The days, newest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..Self::WINDOW)
            .filter(|age| self.bits & (1 << age) != 0)
            .map(|age| self.newest - age)
    }
}

/// Distinct client pods, sorted; at most [`MAX_SOURCE_PODS`]. Up to four are held inline
/// (in the 24 bytes a `Vec` header takes), so most rules allocate nothing for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcePods(SmallVec<[Name; 4]>);

impl SourcePods {
    pub fn insert(&mut self, pod: Name) {
        if let Err(at) = self.0.binary_search(&pod)
            && self.0.len() < MAX_SOURCE_PODS
        {
            self.0.insert(at, pod);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Name> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// More pods were seen than are kept: [`len`](Self::len) is a lower bound.
    pub fn is_saturated(&self) -> bool {
        self.0.len() >= MAX_SOURCE_PODS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intern::Interner;

    #[test]
    fn confidence_grows_with_connections_and_days() {
        let mut e = Evidence::default();
        e.count_connection(1_764_000_000_000, None);
        let once = e.confidence();
        e.connections = 30;
        let often = e.confidence();
        for d in 1..7 {
            e.days.insert(day_of(1_764_000_000_000) - d);
        }
        let weekly = e.confidence();
        assert!(
            once < often && often < weekly && weekly < 1.0,
            "{once} {often} {weekly}"
        );
        assert!(often <= 0.5 + 1e-9, "one day keeps at most half: {often}");
        assert!((weekly - (1.0 - (-3.0f64).exp())).abs() < 1e-9, "{weekly}");
    }

    #[test]
    fn days_keep_the_newest_sixty_four_in_any_order() {
        let mut d = DaySet::default();
        for day in [20_000, 20_002, 19_990, 20_002] {
            d.insert(day);
        }
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![20_002, 20_000, 19_990]);
        d.insert(20_002 + 60);
        assert_eq!(d.count(), 3, "19,990 fell out of the window");
        let mut other = DaySet::default();
        other.insert(19_000);
        d.merge(&other);
        assert_eq!(d.count(), 3, "too old to count");
    }

    #[test]
    fn source_pods_are_distinct_sorted_and_bounded() {
        assert_eq!(size_of::<SourcePods>(), 24, "no bigger than a Vec");
        let mut names = Interner::default();
        let mut s = SourcePods::default();
        let b = names.intern("shop/b");
        let a = names.intern("shop/a");
        s.insert(b);
        s.insert(a);
        s.insert(b);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![b, a]);
        for i in 0..100 {
            s.insert(names.intern(&format!("shop/p{i}")));
        }
        assert_eq!(s.len(), MAX_SOURCE_PODS);
        assert!(s.is_saturated());
    }

    #[test]
    fn merged_evidence_adds_counts_and_widens_times() {
        let mut a = Evidence::default();
        a.count_connection(2_000, None);
        let mut b = Evidence::default();
        b.count_connection(1_000, None);
        b.count_connection(3_000, None);
        b.bytes = 10;
        a.merge(&b);
        assert_eq!(
            (a.connections, a.bytes, a.first_seen_ms, a.last_seen_ms),
            (3, 10, 1_000, 3_000)
        );
    }
}
