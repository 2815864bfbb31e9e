//! docker-machine's `config.json` -> the VM's IP (`machine::parse_machine_config`).
//! Beyond "no panic": an accepted IP is exactly the usable address the JSON records at
//! Driver.IPAddress, and errors are one line.
#![no_main]

use dockroute::machine::parse_machine_config;
use dockroute::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_machine_config(text) {
        Ok(ip) => {
            let v: serde_json::Value = serde_json::from_str(text).expect("accepted, so JSON");
            let recorded = v["Driver"]["IPAddress"]
                .as_str()
                .expect("a Driver.IPAddress");
            assert_eq!(
                recorded.parse::<std::net::Ipv4Addr>(),
                Ok(ip),
                "{recorded:?}"
            );
            assert_eq!(validate::ipv4(&ip.to_string()), Ok(ip));
            let minimal = format!(r#"{{"Driver":{{"IPAddress":"{ip}"}}}}"#);
            assert_eq!(parse_machine_config(&minimal), Ok(ip));
        }
        Err(e) => assert!(!e.contains(['\n', '\r']), "error is not one line: {e:?}"),
    }
});
