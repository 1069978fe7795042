//! Writes to the kernel maps the control plane keeps for the tc datapath, on real maps
//! (`Steering::load`, nothing attached; needs root): deleting what is already gone
//! succeeds — a kernel map that drifted from the tables must not make every later change
//! that deletes the key fail and roll back — and a Maglev table goes in whole, with its
//! size and seed in front.
use control::kernel::{LbMaps, OverlayMap};
use control::maps::lb::{AffinityMatchKey, RevNat};
use xdp_redirect::Steering;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        eprintln!("skipped: needs root");
    }
    uid == 0
}

#[test]
fn deleting_an_absent_key_is_success() {
    if !root() {
        return;
    }
    let mut s = Steering::load().expect("the XDP object loads");
    let p = "10.77.0.0/24".parse().unwrap();
    s.set_route(p, None).expect("no route to delete");
    s.set_route(p, Some([192, 168, 7, 2])).unwrap();
    s.set_route(p, None).unwrap();
    s.set_route(p, None).expect("deleted twice");
    s.set_maglev(RevNat(77), None).expect("no table to delete");
    let k = AffinityMatchKey::new(5, RevNat(77));
    s.set_affinity_match(&k, false)
        .expect("no affinity match to delete");
    s.set_nexthop([192, 168, 7, 9], None)
        .expect("no next hop to delete");
    s.set_identity(424_242, false)
        .expect("no identity to delete");
}

#[test]
fn a_maglev_table_carries_its_size_and_seed() {
    if !root() {
        return;
    }
    let mut s = Steering::load().expect("the XDP object loads");
    let table: Vec<u32> = (0..251).map(|i| 1 + i % 3).collect();
    s.set_maglev(RevNat(9), Some((&table, 0xdead_beef)))
        .unwrap();
    let got = s.kernel_maglev(RevNat(9)).unwrap().expect("a table");
    assert_eq!(got.0, 251, "M");
    assert_eq!(got.1, 0xdead_beef, "seed");
    assert_eq!(got.2, table, "the slots in order");
    s.set_maglev(RevNat(9), None).unwrap();
    assert!(s.kernel_maglev(RevNat(9)).unwrap().is_none());
}
