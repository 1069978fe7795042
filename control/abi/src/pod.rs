//! `aya::Pod` marker impls: the only `unsafe` in this crate.
//!
//! `Pod` promises aya that any byte pattern of the type's size is a valid value and that the
//! type has no uninitialised padding. Each type below is `#[repr(C)]`, built only from
//! integers and byte arrays, and spells out its padding as named zero fields (checked by the
//! size asserts beside each definition), so both promises hold.
#![allow(unsafe_code)]

use super::ipcache::{IpcacheKey, RemoteEndpointInfo};
use super::lb::{AffinityMatchKey, Lb4Backend, Lb4Key, Lb4Service, RevNat4Value};
use super::lxc::{EndpointInfo, EndpointKey};

// SAFETY: repr(C), fields are u8/u16 and [u8; N] only, 20 bytes with no implicit padding
// (asserted in lxc.rs); every bit pattern is a valid value.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: repr(C), fields are u16/u32 and [u8; N]/[u32; N] only, 48 bytes with the C
// struct's implicit padding written out as `pad0`/`pad` (asserted in lxc.rs).
unsafe impl aya::Pod for EndpointInfo {}
// SAFETY: repr(C), u32/u16/u8 and [u8; 16] only, 24 bytes with no implicit padding (asserted
// in ipcache.rs); every bit pattern is a valid value.
unsafe impl aya::Pod for IpcacheKey {}
// SAFETY: repr(C), u32, [u8; 16], u16, u8, u8: 24 bytes, no implicit padding (asserted in
// ipcache.rs); every bit pattern is a valid value.
unsafe impl aya::Pod for RemoteEndpointInfo {}
// SAFETY: repr(C), [u8; 4], [u8; 2], u16, u8, u8, [u8; 2]: 12 bytes, no implicit padding
// (asserted in lb.rs); every bit pattern is a valid value.
unsafe impl aya::Pod for Lb4Key {}
// SAFETY: repr(C), u32, u16, u16, u8, u8, u16: 12 bytes, no implicit padding (asserted in
// lb.rs); every bit pattern is a valid value.
unsafe impl aya::Pod for Lb4Service {}
// SAFETY: repr(C), [u8; 4], [u8; 2], u8, u8, u16, u8, u8: 12 bytes, no implicit padding
// (asserted in lb.rs); every bit pattern is a valid value.
unsafe impl aya::Pod for Lb4Backend {}
// SAFETY: repr(C), [u8; 4] and [u8; 2]: 6 bytes, alignment 1, no padding (asserted in
// lb.rs); every bit pattern is a valid value.
unsafe impl aya::Pod for RevNat4Value {}

// SAFETY: repr(C), u32, u16, u16: 8 bytes with no implicit padding (asserted in lb.rs);
// every bit pattern is a valid value.
unsafe impl aya::Pod for AffinityMatchKey {}

// SAFETY: repr(C), 12 bytes: u16-sized byte pair, two u8, two u32; no padding; any bits valid.
unsafe impl aya::Pod for crate::policy::PolicyEntry {}
