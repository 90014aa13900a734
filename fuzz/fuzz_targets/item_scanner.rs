//! Fuzzes the fast job-item scan of the dispatch path against serde_json.
//!
//! Property, for any UTF-8 input: the scan never panics, and whatever it accepts, serde_json
//! accepts too, reading the same `AgentTimeout` (the scan may always defer to serde_json).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(why) = jobagent::__fuzz::check_item_scan(text) {
        panic!("{why}\ninput: {text:?}");
    }
});
