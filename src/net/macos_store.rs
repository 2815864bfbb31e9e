//! SCDynamicStore notifications (macOS only): configd publishes
//! `State:/Network/Interface/IF/IPv4` for every interface with an IPv4 address (vboxnet0 and the
//! vmnet bridges included) and removes the key with the last address, and
//! `State:/Network/Global/IPv4` when the primary service changes (a VPN connecting). A change of
//! any of these wakes `--wait` and `watch`, which then look at the kernel again; the routing
//! socket wakes them too, so a missed notification only costs time.

use super::darwin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use system_configuration::core_foundation::array::CFArray;
use system_configuration::core_foundation::runloop::{
    CFRunLoop, CFRunLoopSource, kCFRunLoopDefaultMode,
};
use system_configuration::core_foundation::string::CFString;
use system_configuration::dynamic_store::{
    SCDynamicStore, SCDynamicStoreBuilder, SCDynamicStoreCallBackContext,
};

pub struct Watch {
    _store: SCDynamicStore,
    _source: CFRunLoopSource,
    fired: Arc<AtomicBool>,
}

fn changed(_store: SCDynamicStore, _keys: CFArray<CFString>, fired: &mut Arc<AtomicBool>) {
    fired.store(true, Ordering::SeqCst);
}

impl Watch {
    /// Register for the keys on this thread's run loop; `None` when configd cannot be reached.
    pub fn new() -> Option<Watch> {
        let fired = Arc::new(AtomicBool::new(false));
        let store = SCDynamicStoreBuilder::new("dockroute")
            .callback_context(SCDynamicStoreCallBackContext {
                callout: changed,
                info: fired.clone(),
            })
            .build()?;
        let keys: CFArray<CFString> = CFArray::from_CFTypes(&[]);
        let patterns: Vec<CFString> = darwin::STORE_PATTERNS
            .iter()
            .map(|p| CFString::new(p))
            .collect();
        if !store.set_notification_keys(&keys, &CFArray::from_CFTypes(&patterns)) {
            return None;
        }
        let source = store.create_run_loop_source()?;
        // SAFETY: kCFRunLoopDefaultMode is an immutable constant of CoreFoundation.
        CFRunLoop::get_current().add_source(&source, unsafe { kCFRunLoopDefaultMode });
        Some(Watch {
            _store: store,
            _source: source,
            fired,
        })
    }

    /// Run this thread's run loop for up to `slice`; whether a watched key changed.
    pub fn wait(&self, slice: Duration) -> bool {
        if !self.fired.swap(false, Ordering::SeqCst) {
            // SAFETY: as above.
            CFRunLoop::run_in_mode(unsafe { kCFRunLoopDefaultMode }, slice, true);
        }
        self.fired.swap(false, Ordering::SeqCst)
    }
}
