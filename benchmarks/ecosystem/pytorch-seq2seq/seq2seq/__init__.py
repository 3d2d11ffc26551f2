src_field_name = 'src'
tgt_field_name = 'tgt'
