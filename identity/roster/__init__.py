"""The eligibility roster: who may become a patient, and the opaque patient IDs.

- ``csv_format``: reading and validating an organization's roster file.
- ``hashes``: the keyed lookup hashes of normalised DOB, SSN last 4, last name, ZIP and
  member ID; verification computes the same ones to find a person.
- ``importer``: ``carebridge roster import``: all or nothing, batched, audited.
"""
