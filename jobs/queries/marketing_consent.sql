-- Consent records kept by the shop: when each customer agreed to marketing email, and
-- whether they withdrew it since (unsubscribed at the till, by phone, in the old ESP).
-- @param updated_since interval = 1d   consent records changed in this window
select c.id as customer_id,
       c.email,
       c.first_name,
       mc.email_opt_in_at,
       mc.email_opted_out
from customers c
join marketing_consent mc on mc.customer_id = c.id
where mc.updated_at >= now() - {{ updated_since }}
  and not c.deleted
order by c.id
