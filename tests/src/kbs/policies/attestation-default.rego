# The test KBS's default appraisal policy for CPU evidence (our own; the structure follows
# Trustee's: the policy sets AR4SI trust claims, the KBS derives ear.status from them).
#
# Claim values: 2-31 affirming, 32-95 warning, 96-127 contraindicated. Without matching
# reference values a TEE appraises as contraindicated.
#
# Reference values it uses (register them with the admin API, type "sample"):
#   sample:       launch_digest, svn
#   az-snp-vtpm:  snp_launch_measurement (base64), snp_min_tcb_{bootloader,tee,snp,microcode}
#   az-tdx-vtpm:  mr_td (hex)
#   both Azure:   init_data (hex of the expected PCR 8), optional
package policy

import rego.v1

default executables := 33

default hardware := 97

default configuration := 36

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
}

# --- sample (tests only) ---

executables := 3 if input.sample.launch_digest in query_reference_value("launch_digest")

hardware := 2 if input.sample.svn in query_reference_value("svn")

configuration := 2 if input.sample.debug == false

# --- Azure SEV-SNP ---

executables := 3 if input["az-snp-vtpm"].measurement in query_reference_value("snp_launch_measurement")

hardware := 2 if {
	snp := input["az-snp-vtpm"]
	every name in ["bootloader", "tee", "snp", "microcode"] {
		to_number(snp[sprintf("reported_tcb_%s", [name])]) >= min_tcb(name)
	}
}

configuration := 2 if {
	snp := input["az-snp-vtpm"]
	snp.policy_debug_allowed == "0"
	initdata_ok
}

min_tcb(name) := v if {
	v := query_reference_value(sprintf("snp_min_tcb_%s", [name]))
	v != null
} else := 0

# --- Azure TDX ---

executables := 3 if input["az-tdx-vtpm"].quote.body.mr_td in query_reference_value("mr_td")

hardware := 2 if input["az-tdx-vtpm"].quote.header.vendor_id == "939a7233f79c4ca9940a0db3957f0607"

configuration := 2 if {
	tdx := input["az-tdx-vtpm"]
	tdx.td_attributes.debug == false
	initdata_ok
}

# --- shared ---

# Initdata (the verifier puts the measured PCR 8 at input.init_data) is checked against reference
# values only when some are registered.
initdata_ok if query_reference_value("init_data") == null

initdata_ok if input.init_data in query_reference_value("init_data")
