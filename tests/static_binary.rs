//! The Linux (glibc) binary is one static PIE (.cargo/config.toml): it starts without the dynamic
//! loader, which is most of what a short `up` costs. ELF64 little-endian program headers only.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn linux_binary_is_static_pie() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_dockroute")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let e_type = u16_at(0x10);
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    let types: Vec<u32> = (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect();
    const PT_INTERP: u32 = 3;
    const ET_DYN: usize = 3; // position-independent: ASLR stays
    assert!(!types.contains(&PT_INTERP), "needs a dynamic loader");
    assert_eq!(e_type, ET_DYN, "not position-independent");
}
