//! Health decisions as small pure state machines: the active-check threshold counter and
//! the passive ejection back-off. No I/O, no clocks, no atomics; callers apply the result.

use std::fmt;
use std::time::Duration;

/// How many times `ejection_time` the longest ejection lasts.
pub const MAX_EJECTION_FACTOR: u32 = 10;

/// Counts consecutive check results and says when a backend changes state.
/// A backend counts as up until checks say otherwise.
#[derive(Debug, Clone)]
pub struct ActivePolicy {
    up: bool,
    streak: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

/// A change of a backend's active health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `after` consecutive passed checks brought it back.
    Up {
        /// Checks that passed in a row.
        after: u32,
    },
    /// `after` consecutive failed checks took it out.
    Down {
        /// Checks that failed in a row.
        after: u32,
    },
}

impl Change {
    /// True for `Up`.
    pub fn is_up(self) -> bool {
        matches!(self, Change::Up { .. })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Change::Up { after } => write!(f, "up: {after} passed checks"),
            Change::Down { after } => write!(f, "down: {after} failed checks"),
        }
    }
}

impl ActivePolicy {
    /// A policy for a backend that starts up. Thresholds below 1 count as 1.
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        ActivePolicy {
            up: true,
            streak: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    /// Whether the backend is up now.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check; returns the change it causes, if any.
    pub fn record(&mut self, passed: bool) -> Option<Change> {
        if passed == self.up {
            // A result that agrees with the state breaks any streak against it.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up {
            self.unhealthy_threshold
        } else {
            self.healthy_threshold
        };
        if self.streak < needed {
            return None;
        }
        self.up = passed;
        let after = self.streak;
        self.streak = 0;
        Some(if passed {
            Change::Up { after }
        } else {
            Change::Down { after }
        })
    }
}

/// How long the `n`th ejection in a row lasts (n >= 1): `base`, doubling each time,
/// never more than `MAX_EJECTION_FACTOR × base`.
pub fn ejection_time(base: Duration, n: u32) -> Duration {
    let factor = 1u32
        .checked_shl(n.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(MAX_EJECTION_FACTOR);
    base.saturating_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn goes_down_after_unhealthy_threshold_and_up_after_healthy_threshold() {
        let mut p = ActivePolicy::new(2, 3);
        assert_eq!(p.record(false), None);
        assert_eq!(p.record(false), None);
        assert_eq!(p.record(false), Some(Change::Down { after: 3 }));
        assert!(!p.is_up());
        assert_eq!(p.record(false), None, "already down");
        assert_eq!(p.record(true), None);
        assert_eq!(p.record(true), Some(Change::Up { after: 2 }));
        assert!(p.is_up());
    }

    #[test]
    fn a_result_the_other_way_resets_the_streak() {
        let mut p = ActivePolicy::new(2, 3);
        p.record(false);
        p.record(false);
        assert_eq!(p.record(true), None);
        assert_eq!(p.record(false), None);
        assert_eq!(p.record(false), None);
        assert_eq!(p.record(false), Some(Change::Down { after: 3 }));
    }

    #[test]
    fn ejections_double_up_to_ten_times() {
        let base = Duration::from_secs(30);
        let got: Vec<u64> = (1..=7).map(|n| ejection_time(base, n).as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(ejection_time(base, 0), base);
        assert_eq!(ejection_time(base, u32::MAX), base * 10);
    }

    proptest! {
        /// Whatever the sequence, the state changes exactly when the last `threshold`
        /// results agree against it.
        #[test]
        fn changes_only_on_a_full_streak(h in 1u32..5, u in 1u32..5, results in prop::collection::vec(any::<bool>(), 0..200)) {
            let mut p = ActivePolicy::new(h, u);
            let mut up = true;
            let mut streak = 0;
            for r in results {
                if r == up { streak = 0 } else { streak += 1 }
                let change = p.record(r);
                let expect_change = streak == if up { u } else { h };
                prop_assert_eq!(change.is_some(), expect_change);
                if expect_change {
                    up = r;
                    streak = 0;
                }
                prop_assert_eq!(p.is_up(), up);
            }
        }
    }
}
