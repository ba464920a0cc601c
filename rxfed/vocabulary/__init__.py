"""Code systems shared by the patient's device and the plugins that derive signals on it:
validation and normalisation of ICD-10 and SNOMED CT codes. Pure data and functions, below
both the client and the plugins, so neither depends on the other for a vocabulary."""
