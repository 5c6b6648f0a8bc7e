//! The crate's only unsafe code: an acceptor credential from a named keytab and replay cache,
//! through MIT's credential-store extension `gss_acquire_cred_from`, which libgssapi does not
//! wrap. Naming the keytab here (rather than setting `KRB5_KTNAME` for the whole process) lets
//! one process hold several, and leaves the environment alone.
//!
//! Invariant: every pointer handed to GSS-API points into a `CString` or a local that outlives
//! the call, and the credential handle it returns is owned by exactly one [`Cred`], which
//! releases it when dropped.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::path::Path;
use std::ptr;

use libgssapi::credential::Cred;
use libgssapi::error::{Error as GssError, MajorFlags};
use libgssapi_sys::{
    _GSS_C_INDEFINITE, GSS_C_ACCEPT, GSS_S_COMPLETE, OM_uint32, gss_acquire_cred_from,
    gss_cred_id_t, gss_cred_usage_t, gss_key_value_element_desc, gss_key_value_set_desc,
};

/// A path that GSS-API cannot take (it holds a NUL byte).
fn bad_path() -> GssError {
    GssError {
        major: MajorFlags::GSS_S_BAD_NAME,
        minor: 0,
    }
}

/// An acceptor credential for every principal in `keytab` (`FILE:` type, read afresh at each
/// accept), with replays recorded in `replay_cache` (`file2:` type) when given.
pub(crate) fn acceptor_credential(
    keytab: &Path,
    replay_cache: Option<&Path>,
) -> Result<Cred, GssError> {
    let keytab = CString::new(format!("FILE:{}", keytab.display())).map_err(|_| bad_path())?;
    let rcache = replay_cache
        .map(|p| CString::new(format!("file2:{}", p.display())))
        .transpose()
        .map_err(|_| bad_path())?;
    let mut elements = vec![gss_key_value_element_desc {
        key: c"keytab".as_ptr(),
        value: keytab.as_ptr(),
    }];
    if let Some(rc) = &rcache {
        elements.push(gss_key_value_element_desc {
            key: c"rcache".as_ptr(),
            value: rc.as_ptr(),
        });
    }
    let store = gss_key_value_set_desc {
        count: OM_uint32::try_from(elements.len()).unwrap_or(0),
        elements: elements.as_mut_ptr(),
    };
    let mut minor: OM_uint32 = 0;
    let mut cred: gss_cred_id_t = ptr::null_mut();
    // SAFETY: `store` and the strings it points to live until the call returns; a null name
    // asks for every principal of the keytab and a null mechanism set for the default ones;
    // the two optional outputs are null, which the API allows.
    let major = unsafe {
        gss_acquire_cred_from(
            &raw mut minor,
            ptr::null_mut(),
            _GSS_C_INDEFINITE,
            ptr::null_mut(),
            GSS_C_ACCEPT as gss_cred_usage_t,
            &raw const store,
            &raw mut cred,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if major == GSS_S_COMPLETE {
        // SAFETY: on success `cred` is a fresh handle that nothing else owns.
        Ok(unsafe { Cred::from_c(cred) })
    } else {
        Err(GssError {
            major: MajorFlags::from_bits_retain(major),
            minor,
        })
    }
}
