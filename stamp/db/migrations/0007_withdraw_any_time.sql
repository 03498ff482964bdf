-- Withdrawal at any time after intake (docs/withdrawal.md).
--
-- `certificates.withdrawn` now means: the issuing body's withdrawal is recorded in
-- Stamp (irrevocably), whatever the registry has done with it yet. It is set in the
-- same transaction as the withdrawal row, before the 201, in any state but
-- `rejected`; the certificate then stops holding its metering point's period (the
-- exclusion constraint of 0004 and the conflict lookup skip withdrawn rows), so a
-- corrected certificate can be posted at once. Whether the registry holds the stream
-- as withdrawn is `withdrawn_certificates.state`.
--
-- A withdrawn certificate may now be in any state: it finishes its issuance (the
-- registry needs the stream before it can withdraw it) but its slice is withheld
-- from the wallet: state `withheld` instead of `delivered`.
ALTER TABLE certificates DROP CONSTRAINT certificates_withdrawn_at_rest;

ALTER TABLE certificates DROP CONSTRAINT certificates_state_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_state_check CHECK (state IN (
    'stored', 'sent_to_registry', 'issued_in_registry', 'marked_as_issued',
    'delivered', 'withheld', 'rejected', 'failed'));

-- Only a withdrawn certificate is withheld from its wallet.
ALTER TABLE certificates ADD CONSTRAINT certificates_withheld_withdrawn
    CHECK (state <> 'withheld' OR withdrawn);

-- `moot`: the registry rejected the certificate's issuance (or it never reached the
-- registry and cannot any more): there is no stream to withdraw and nothing was sent.
ALTER TABLE withdrawn_certificates DROP CONSTRAINT withdrawn_certificates_state_check;
ALTER TABLE withdrawn_certificates ADD CONSTRAINT withdrawn_certificates_state_check
    CHECK (state IN ('pending', 'committed', 'failed', 'moot'));
