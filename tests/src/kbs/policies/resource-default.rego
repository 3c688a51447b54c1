# The test KBS's default resource policy (our own): release a resource only to a TEE whose CPU
# appraisal has hardware, executables and configuration in the affirming range.
package policy

import rego.v1

default allow := false

allow if {
	vector := input.submods.cpu0["ear.trustworthiness-vector"]
	every claim in ["hardware", "executables", "configuration"] {
		vector[claim] < 32
	}
}
