//! The `image_layer` fuzz target's entry point over seed layers (valid and hostile) and
//! thousands of deterministic mutations of them, header checksums repaired so the mutations
//! reach the unpacker rather than stopping at the checksum: no panic, nothing outside the
//! destination changed (sentinels beside it compared before and after), every refusal a
//! typed layer error.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpod_image_layer::fuzzing::unpack_sandboxed;

fn seeds() -> Vec<Vec<u8>> {
    vec![
        Tar::new()
            .add(Member::dir(b"etc/"))
            .add(Member::file(b"etc/passwd", b"root:x:0:0::/root:/bin/sh\n"))
            .add(Member::symlink(b"etc/mtab", b"/proc/mounts"))
            .add(Member::hardlink(b"etc/pw", b"etc/passwd"))
            .add(Member::new(b"run/fifo", FIFO))
            .finish(),
        Tar::new()
            .add(Member::file(b"a/.wh.gone", b""))
            .add(Member::file(b"b/.wh..wh..opq", b""))
            .pax(&[
                ("path", b"long/name"),
                ("SCHILY.xattr.user.x", b"y"),
                ("mtime", b"1.5"),
            ])
            .add(Member::file(b"short", b"data"))
            .gnu_long(b'L', b"gnu/long/name")
            .add(Member::file(b"x", b"y"))
            .finish(),
        Tar::new()
            .add(Member::symlink(b"link", b"../outside"))
            .add(Member::file(b"link/victim", b"pwned"))
            .finish(),
        Tar::new()
            .add(Member::dir(b"d/"))
            .add(Member::symlink(b"d", b"/"))
            .add(Member::hardlink(b"h", b"d/etc/shadow"))
            .finish(),
        // Aimed at the sentinels beside the destination.
        Tar::new()
            .add(Member::hardlink(b"h", b"../outside/victim"))
            .add(Member::file(b"../outside/victim", b"pwned"))
            .add(Member::dir(b"../outside/dir/"))
            .finish(),
        Tar::new()
            .add(Member::symlink(b"up", b".."))
            .add(Member::file(b"up/outside/dir/new", b"pwned"))
            .add(Member::file(b"../link/victim", b"pwned"))
            .finish(),
    ]
}

fn checksum_ok(block: &[u8]) -> bool {
    let Ok(h) = tar::Header::from_byte_slice(block).cksum() else {
        return false;
    };
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..512])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * 32;
    h == sum
}

#[test]
fn mutated_layers_never_panic_or_escape() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut runs = 0;
    let mut refused = 0;
    for seed in seeds() {
        let _ = unpack_sandboxed(&seed);
        let headers: Vec<usize> = (0..seed.len() / 512)
            .filter(|i| checksum_ok(&seed[i * 512..i * 512 + 512]))
            .collect();
        for _ in 0..330 {
            let mut data = seed.clone();
            for _ in 0..1 + next() % 4 {
                let pos = match next() % 3 {
                    // Inside a header: names, types, sizes, modes, link names.
                    0 | 1 if !headers.is_empty() => {
                        headers[(next() as usize) % headers.len()] * 512 + (next() % 512) as usize
                    }
                    _ => (next() as usize) % data.len(),
                };
                data[pos] = match next() % 4 {
                    0 => b'/',
                    1 => b'.',
                    2 => b"0123456789LKxgS"[(next() % 15) as usize],
                    _ => next() as u8,
                };
            }
            for &h in &headers {
                let block = &mut data[h * 512..h * 512 + 512];
                let mut header = tar::Header::new_old();
                header.as_mut_bytes().copy_from_slice(block);
                header.set_cksum();
                block.copy_from_slice(header.as_bytes());
            }
            if next() % 8 == 0 {
                data.truncate((next() as usize) % data.len());
            }
            refused += u32::from(unpack_sandboxed(&data).is_err());
            runs += 1;
        }
    }
    assert_eq!(runs, 1980);
    // Both outcomes are exercised (the refusals' kinds are checked inside).
    assert!(
        refused > 100 && refused < runs - 100,
        "{refused} of {runs} refused"
    );
}
