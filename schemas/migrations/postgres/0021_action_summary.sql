-- The action's summary (runs and commands counted per status), kept by every step of its runs:
-- a step moves its own run's counts, so neither the step nor a read of the action goes over
-- the action's other runs. NULL for actions stored before this migration: their summary is
-- counted from their runs (as before) and kept from their next step on.
ALTER TABLE actions ADD COLUMN summary_json TEXT;
