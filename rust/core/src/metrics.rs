//! Metric accumulation for `self.log`: one slot per logged key and hook, each reducing its
//! values by a weighted mean (weights are batch sizes), a sum, a max or a min, as Lightning's
//! `reduce_fx` does. Values arrive as f64, read by the bindings straight from a CPU tensor's
//! memory, so the step path never asks torch for a host copy.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Mean,
    Sum,
    Max,
    Min,
}

impl Reduce {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "mean" | "avg" => Some(Self::Mean),
            "sum" => Some(Self::Sum),
            "max" => Some(Self::Max),
            "min" => Some(Self::Min),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    reduce: Reduce,
    /// Weighted sum for `Mean`, plain sum for `Sum`, running extreme for `Max`/`Min`.
    acc: f64,
    weight: f64,
    count: u64,
    last: f64,
}

impl Slot {
    fn new(reduce: Reduce) -> Self {
        Self { reduce, acc: Self::identity(reduce), weight: 0.0, count: 0, last: f64::NAN }
    }

    fn identity(reduce: Reduce) -> f64 {
        match reduce {
            Reduce::Mean | Reduce::Sum => 0.0,
            Reduce::Max => f64::NEG_INFINITY,
            Reduce::Min => f64::INFINITY,
        }
    }
}

/// All slots of one loop (training, validation, ...). Slots are addressed by the index
/// `register` returns, so the per-step path does no hashing.
#[derive(Clone, Debug, Default)]
pub struct MetricStore {
    slots: Vec<Slot>,
}

impl MetricStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, reduce: Reduce) -> usize {
        self.slots.push(Slot::new(reduce));
        self.slots.len() - 1
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Add one value with its weight (the batch size). Returns false for an unknown slot.
    pub fn update(&mut self, slot: usize, value: f64, weight: f64) -> bool {
        let Some(s) = self.slots.get_mut(slot) else {
            return false;
        };
        s.last = value;
        s.count += 1;
        match s.reduce {
            Reduce::Mean => {
                s.acc += value * weight;
                s.weight += weight;
            }
            Reduce::Sum => s.acc += value,
            // NaN propagates, as torch.max over a tensor holding NaN does.
            Reduce::Max => s.acc = if value.is_nan() || value > s.acc { value } else { s.acc },
            Reduce::Min => s.acc = if value.is_nan() || value < s.acc { value } else { s.acc },
        }
        true
    }

    /// The reduced value since the last reset; `None` if nothing was logged.
    pub fn compute(&self, slot: usize) -> Option<f64> {
        let s = self.slots.get(slot)?;
        if s.count == 0 {
            return None;
        }
        Some(match s.reduce {
            Reduce::Mean if s.weight == 0.0 => f64::NAN,
            Reduce::Mean => s.acc / s.weight,
            _ => s.acc,
        })
    }

    /// The most recent value (what step-level logging shows).
    pub fn last(&self, slot: usize) -> Option<f64> {
        self.slots.get(slot).filter(|s| s.count > 0).map(|s| s.last)
    }

    pub fn count(&self, slot: usize) -> u64 {
        self.slots.get(slot).map_or(0, |s| s.count)
    }

    pub fn reset(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Slot::new(s.reduce);
        }
    }

    pub fn reset_all(&mut self) {
        for s in &mut self.slots {
            *s = Slot::new(s.reduce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_is_weighted_by_batch_size() {
        let mut m = MetricStore::new();
        let s = m.register(Reduce::Mean);
        m.update(s, 1.0, 32.0);
        m.update(s, 4.0, 16.0);
        let got = m.compute(s).unwrap_or(f64::NAN);
        assert!((got - (32.0 + 64.0) / 48.0).abs() < 1e-12);
        assert_eq!(m.last(s), Some(4.0));
    }

    #[test]
    fn sum_max_min_and_reset() {
        let mut m = MetricStore::new();
        let (a, b, c) = (m.register(Reduce::Sum), m.register(Reduce::Max), m.register(Reduce::Min));
        for v in [3.0, -1.0, 2.0] {
            for s in [a, b, c] {
                m.update(s, v, 1.0);
            }
        }
        assert_eq!(m.compute(a), Some(4.0));
        assert_eq!(m.compute(b), Some(3.0));
        assert_eq!(m.compute(c), Some(-1.0));
        m.reset_all();
        assert_eq!(m.compute(a), None);
        assert_eq!(m.count(b), 0);
    }

    #[test]
    fn nan_propagates_through_max() {
        let mut m = MetricStore::new();
        let s = m.register(Reduce::Max);
        m.update(s, 1.0, 1.0);
        m.update(s, f64::NAN, 1.0);
        m.update(s, 5.0, 1.0);
        assert!(m.compute(s).is_some_and(f64::is_nan));
    }

    #[test]
    fn unknown_slot_is_reported_not_panicking() {
        let mut m = MetricStore::new();
        assert!(!m.update(3, 1.0, 1.0));
        assert_eq!(m.compute(3), None);
    }
}
