//! Bindings to the few MIT krb5 functions idbridge calls directly (an initial ticket from keys
//! held in memory): generated from the system's `krb5.h`, so the struct layouts are the
//! library's own.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-lib=krb5");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let header = "#include <krb5.h>\n#include <profile.h>\n";
    let bindings = bindgen::Builder::default()
        .header_contents("idbridge_krb5.h", header)
        .allowlist_function(
            "krb5_(init_context_profile|free_context|parse_name|free_principal|kt_resolve|kt_add_entry|kt_close|cc_resolve|cc_close|get_init_creds_opt_alloc|get_init_creds_opt_free|get_init_creds_opt_set_tkt_life|get_init_creds_opt_set_out_ccache|get_init_creds_keytab|free_cred_contents|get_error_message|free_error_message)",
        )
        .allowlist_function("profile_(init_path|release)")
        .allowlist_type("krb5_keytab_entry|krb5_creds")
        .layout_tests(false)
        .generate()
        .expect("cannot read krb5.h: install the MIT Kerberos headers (Debian: libkrb5-dev; scripts/setup does)");
    bindings
        .write_to_file(out.join("krb5.rs"))
        .expect("write the krb5 bindings");
}
