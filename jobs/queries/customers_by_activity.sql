-- Customers by their last order: shared by the weekly-active and lapsed jobs.
-- @param ordered_after interval   only customers whose last order is newer than now() minus this
-- @param ordered_before interval = 0d   ...and older than now() minus this
-- @param country text   optional: one country only (ISO code)
select c.id            as customer_id,
       c.email,
       c.phone,
       c.first_name,
       c.last_name,
       c.city,
       c.country,
       c.lifetime_value,
       c.plan,
       c.last_order_at
from customers c
where c.last_order_at >= now() - {{ ordered_after }}
  and c.last_order_at <  now() - {{ ordered_before }}
  and not c.deleted
{% if country is defined %}
  and c.country = {{ country }}
{% endif %}
order by c.id
