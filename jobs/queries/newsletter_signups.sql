-- People who ticked "send me the newsletter" at checkout since a given time.
-- @param since interval = 1d   how far back to look for new sign-ups
select c.id as customer_id,
       c.email,
       c.first_name
from customers c
where c.newsletter_opt_in_at >= now() - {{ since }}
  and not c.deleted
order by c.id
