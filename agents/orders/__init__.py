"""Review (审单): auto-review and interception rules per tenant, holds, and channel cancellations."""
