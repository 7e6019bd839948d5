//! Per-request state a device keeps between its hooks.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use smallvec::SmallVec;

/// Identifies one device's slot in every request's [`DeviceSlots`]; unique in the process, so
/// a device built by a reload never sees a slot left by the device it replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotKey(u64);

impl SlotKey {
    /// A key no other call returns.
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// State devices keep for the length of one request, reachable from every hook, the body hook
/// included (it sees only the [`RequestInfo`](crate::RequestInfo)): at most one value per
/// [`SlotKey`], dropped with the request. A WASM device keeps its per-request instance here.
///
/// The lock is per request and the hooks of one request run one after another, so it is
/// never contended. The first two values are kept inline (only the values themselves are
/// allocated), so a request with one or two slot-keeping devices allocates no list; a request
/// no such device saw has no list to drop.
#[derive(Default)]
pub struct DeviceSlots(Mutex<Option<Slots>>);

/// The values, by key.
type Slots = SmallVec<[(SlotKey, Box<dyn Any + Send>); 2]>;

impl DeviceSlots {
    /// Takes the value under `key` out of the slots (`None` if there is none, or it is not a
    /// `T`).
    pub fn take<T: Any + Send>(&self, key: SlotKey) -> Option<Box<T>> {
        let mut slots = self.lock();
        let slots = slots.as_mut()?;
        let at = slots.iter().position(|(k, _)| *k == key)?;
        let (_, value) = slots.swap_remove(at);
        let value: Box<dyn Any> = value;
        value.downcast().ok()
    }

    /// Puts `value` under `key`, replacing (and dropping) what was there.
    pub fn put<T: Any + Send>(&self, key: SlotKey, value: Box<T>) {
        let old = {
            let mut slots = self.lock();
            let slots = slots.get_or_insert_with(Slots::new);
            match slots.iter_mut().find(|(k, _)| *k == key) {
                Some((_, slot)) => Some(std::mem::replace(slot, value)),
                None => {
                    slots.push((key, value));
                    None
                }
            }
        };
        drop(old);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Slots>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for DeviceSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<SlotKey> = self.lock().iter().flatten().map(|(k, _)| *k).collect();
        f.debug_tuple("DeviceSlots").field(&keys).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_per_key_and_typed() {
        let slots = DeviceSlots::default();
        let (a, b) = (SlotKey::unique(), SlotKey::unique());
        assert_ne!(a, b);
        slots.put(a, Box::new(1u32));
        slots.put(b, Box::new(String::from("b")));
        assert_eq!(slots.take::<String>(a), None, "wrong type: nothing");
        slots.put(a, Box::new(2u32));
        assert_eq!(slots.take::<u32>(a).as_deref(), Some(&2));
        assert_eq!(slots.take::<u32>(a), None, "taken");
        assert_eq!(
            slots.take::<String>(b).as_deref().map(String::as_str),
            Some("b")
        );
    }

    #[test]
    fn values_drop_with_the_slots() {
        let marker = std::sync::Arc::new(());
        let slots = DeviceSlots::default();
        slots.put(SlotKey::unique(), Box::new(marker.clone()));
        assert_eq!(std::sync::Arc::strong_count(&marker), 2);
        drop(slots);
        assert_eq!(std::sync::Arc::strong_count(&marker), 1);
    }
}
